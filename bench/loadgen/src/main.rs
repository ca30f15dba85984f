//! `weft-loadgen`: the load generator of Weft's proxy benchmarks (bench/proxies.py).
//!
//! One thread per connection, blocking sockets: a sender sleeps (with 1 µs timer slack) until
//! its request is due, so sends are on time to a few microseconds without spinning a core the
//! backend shares. Results are HdrHistograms, printed as one JSON object.
#![forbid(unsafe_code)]

mod args;
mod closed_loop;
mod handshakes;
mod http1;
mod open_loop;
mod report;
mod schedule;
mod tally;
mod target;
mod tls;

use std::process::ExitCode;

use args::{Args, Mode};
use target::Target;

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("weft-loadgen: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    target::tight_timers();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<serde_json::Value, tls::TlsError> {
    let target = Target {
        addr: args.target,
        request: http1::request(&args.host, &args.path, args.mode == Mode::Handshake),
    };
    let mut report = match args.mode {
        Mode::Rate => open_loop::run(
            &target,
            &open_loop::Settings {
                rate: args.rate.expect("checked by args::parse"),
                connections: args.connections,
                warmup: args.warmup,
                duration: args.duration,
            },
        ),
        Mode::Max | Mode::Bulk => closed_loop::run(
            &target,
            &closed_loop::Settings {
                connections: args.connections,
                warmup: args.warmup,
                duration: args.duration,
            },
            if args.mode == Mode::Max {
                "max"
            } else {
                "bulk"
            },
        ),
        Mode::Handshake => {
            let files = tls::ClientFiles {
                cert_chain: args.cert_chain.as_deref().expect("checked by args::parse"),
                key: args.key.as_deref().expect("checked by args::parse"),
                bundle: args.bundle.as_deref().expect("checked by args::parse"),
            };
            handshakes::run(
                &target,
                &tls::client_config(&files, tls::Verify::Chain)?,
                &tls::client_config(&files, tls::Verify::No)?,
                &handshakes::Settings {
                    connections: args.connections,
                    warmup: args.warmup,
                    duration: args.duration,
                },
            )
        }
    };
    report["target"] = serde_json::json!(args.target.to_string());
    report["path"] = serde_json::json!(args.path);
    Ok(report)
}
