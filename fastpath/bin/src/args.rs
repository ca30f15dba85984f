//! The command line: where the config, certificates and listener bindings are, and how many
//! worker threads to run. Hand-parsed: five paths and two numbers do not need a framework.

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: fastpath-proxy --config FILE --cert-chain FILE --key FILE --bundle FILE --listeners FILE
                      [--workers N] [--drain-timeout SECONDS]

Runs the fastpath data plane on its own. Once every listener is bound it prints one JSON line,
{\"ready\":true,\"revision\":...,\"bound\":{...}}, to stdout.
  SIGHUP           reads the config and certificate files again; a config that is refused
                   leaves the running one in place, and the reason goes to stderr
  SIGTERM, SIGINT  stop accepting, let in-flight requests finish (up to --drain-timeout), exit

  --config FILE          ProxyConfig JSON (weft.dev/proxyconfig/v1)
  --cert-chain FILE      this workload's certificate chain, PEM, leaf first
  --key FILE             its private key, PEM
  --bundle FILE          the trust bundle, PEM
  --listeners FILE       listener bindings JSON: inbound, app, outboundHttp, outboundTcp,
                         outboundCapture, originalDestinations
  --workers N            tokio worker threads (default 1)
  --drain-timeout SECS   how long in-flight requests may take to finish on stop (default 5)";

/// How long in-flight requests may run on after SIGTERM, as the Python binding's default.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub config: PathBuf,
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub listeners: PathBuf,
    pub workers: usize,
    pub drain: Duration,
}

/// What the command line asked for: to run, or only for help.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Args),
    Help,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    #[error("unknown option {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    NoValue(String),
    #[error("{option} {value:?}: {reason}")]
    Invalid {
        option: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{0} is required")]
    Missing(&'static str),
}

pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Command, ArgsError> {
    let mut paths: [(&'static str, Option<PathBuf>); 5] = [
        ("--config", None),
        ("--cert-chain", None),
        ("--key", None),
        ("--bundle", None),
        ("--listeners", None),
    ];
    let mut workers = fastpath::tunables::DEFAULT_WORKERS;
    let mut drain = DEFAULT_DRAIN;
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        // Both `--option value` and `--option=value`.
        let (option, inline) = match arg.split_once('=') {
            Some((o, v)) => (o.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| ArgsError::NoValue(option.clone()))
        };
        if let Some(slot) = paths.iter_mut().find(|(name, _)| *name == option) {
            slot.1 = Some(PathBuf::from(value()?));
        } else if option == "--workers" {
            let v = value()?;
            workers = match v.parse() {
                Ok(n) if n > 0 => n,
                _ => return Err(invalid("--workers", v, "not a positive integer")),
            };
        } else if option == "--drain-timeout" {
            let v = value()?;
            drain = match v
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
            {
                Some(d) => d,
                None => return Err(invalid("--drain-timeout", v, "not a number of seconds")),
            };
        } else {
            return Err(ArgsError::Unknown(option));
        }
    }
    let [config, cert_chain, key, bundle, listeners] =
        paths.map(|(name, path)| path.ok_or(ArgsError::Missing(name)));
    Ok(Command::Run(Args {
        config: config?,
        cert_chain: cert_chain?,
        key: key?,
        bundle: bundle?,
        listeners: listeners?,
        workers,
        drain,
    }))
}

fn invalid(option: &'static str, value: String, reason: &'static str) -> ArgsError {
    ArgsError::Invalid {
        option,
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    const FILES: &str = "--config c.json --cert-chain chain.pem --key key.pem --bundle ca.pem \
                         --listeners l.json";

    #[test]
    fn every_file_is_named_and_the_numbers_have_defaults() {
        let Ok(Command::Run(args)) = parse(argv(FILES)) else {
            panic!("parses")
        };
        assert_eq!(args.config, PathBuf::from("c.json"));
        assert_eq!(args.listeners, PathBuf::from("l.json"));
        assert_eq!((args.workers, args.drain), (1, DEFAULT_DRAIN));
    }

    #[test]
    fn options_take_their_value_after_a_space_or_an_equals_sign() {
        let Ok(Command::Run(args)) =
            parse(argv(&format!("{FILES} --workers=2 --drain-timeout 0.5")))
        else {
            panic!("parses")
        };
        assert_eq!((args.workers, args.drain), (2, Duration::from_millis(500)));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(
            parse(argv("--config c.json")),
            Err(ArgsError::Missing("--cert-chain"))
        );
        assert_eq!(
            parse(argv(&format!("{FILES} --workers 0")))
                .unwrap_err()
                .to_string(),
            "--workers \"0\": not a positive integer"
        );
        assert_eq!(
            parse(argv(&format!("{FILES} --verbose"))),
            Err(ArgsError::Unknown("--verbose".into()))
        );
        assert_eq!(
            parse(argv(&format!("{FILES} --key"))),
            Err(ArgsError::NoValue("--key".into()))
        );
        assert_eq!(parse(argv("--help")), Ok(Command::Help));
    }
}
