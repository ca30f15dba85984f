//! `fastpath-proxy`: Weft's data plane as a process of its own, without Python, for benchmarks
//! and fuzzing. It runs the same `fastpath::Proxy` the sidecar agent runs through the binding.
//!
//! The main thread only waits for signals; the proxy serves on its own runtime. Stdout carries
//! one JSON line per event (ready, reloaded, stopped) for scripts to wait on; stderr carries
//! errors for people.
#![forbid(unsafe_code)]

mod args;

/// mimalloc for every allocation the data plane makes: a request allocates and frees many small
/// objects (header maps, strings, boxed futures), and glibc malloc/free was about 9 % of a
/// proxy's samples under load (docs/benchmarks.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fastpath::tls::{Material, TlsError};
use fastpath::{Listeners, Proxy, ProxyError};
use serde_json::json;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use args::{Args, Command};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listeners {path}: {source}")]
    Listeners {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
}

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fastpath-proxy: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastpath-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    // Handlers first: a SIGHUP sent the moment "ready" is printed must reload, not kill.
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM]).map_err(Error::Signals)?;
    let config = read(&args.config)?;
    let listeners: Listeners =
        serde_json::from_str(&read(&args.listeners)?).map_err(|source| Error::Listeners {
            path: args.listeners.clone(),
            source,
        })?;
    let mut proxy = Proxy::start(&config, material(args)?, listeners, args.workers)?;
    event(json!({"ready": true, "revision": revision(&proxy), "bound": proxy.bound}));
    for signal in signals.forever() {
        if signal != SIGHUP {
            break;
        }
        reload(&proxy, args);
    }
    proxy.shutdown(args.drain);
    event(json!({"stopped": true}));
    Ok(())
}

/// SIGHUP: the config and the certificates, each read again and each refused on its own.
fn reload(proxy: &Proxy, args: &Args) {
    match read(&args.config).and_then(|config| Ok(proxy.reload(&config)?)) {
        Ok(revision) => event(json!({"reloaded": true, "revision": revision})),
        Err(e) => {
            let kept = revision(proxy);
            eprintln!("fastpath-proxy: config refused, revision {kept} keeps serving: {e}");
            event(json!({"reloaded": false, "revision": kept, "error": e.to_string()}));
        }
    }
    match material(args) {
        Ok(m) => proxy.rotate(m),
        Err(e) => eprintln!("fastpath-proxy: certificates refused, the old ones stay: {e}"),
    }
}

fn material(args: &Args) -> Result<Material, Error> {
    let chain = read_bytes(&args.cert_chain)?;
    let key = read_bytes(&args.key)?;
    let bundle = read_bytes(&args.bundle)?;
    Ok(Material::from_pem(&chain, &key, &bundle)?)
}

fn revision(proxy: &Proxy) -> String {
    proxy.revision()
}

/// One event as a JSON line on stdout (line-buffered, so it is out before the next signal).
fn event(value: serde_json::Value) {
    println!("{value}");
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}
