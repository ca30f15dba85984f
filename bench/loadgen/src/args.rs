//! The command line. Hand-parsed, as fastpath-proxy's is: one mode and a few options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: weft-loadgen MODE --target HOST:PORT [options]

Modes (one JSON object on stdout when done; phase markers on stderr):
  rate       open loop: --rate requests/s spread over --connections keep-alive connections;
             latency from each request's scheduled send time (no coordinated omission)
  max        closed loop on --connections keep-alive connections: maximum requests/s
  bulk       closed loop, body bytes counted: MB/s (use --path for a large body)
  handshake  a new connection per request: full TLS 1.3 handshake with a client certificate
             (--cert-chain, --key, --bundle), one request, close; handshakes/s

Options:
  --target HOST:PORT   where to connect (required)
  --host NAME          Host header (default: the target)
  --path PATH          request path (default /)
  --rate N             requests/s, rate mode (required there)
  --connections N      connections, or concurrent handshakes (default 16; bulk 1)
  --duration SECONDS   measured window (default 10)
  --warmup SECONDS     load before the measured window, not recorded (default 2)
  --cert-chain FILE --key FILE --bundle FILE   handshake mode: client identity and trust";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Rate,
    Max,
    Bulk,
    Handshake,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub mode: Mode,
    pub target: SocketAddr,
    pub host: String,
    pub path: String,
    pub rate: Option<f64>,
    pub connections: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub cert_chain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    #[error("no mode given")]
    NoMode,
    #[error("unknown mode {0:?}")]
    UnknownMode(String),
    #[error("unknown option {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    NoValue(String),
    #[error("{option} {value:?}: {reason}")]
    Invalid {
        option: String,
        value: String,
        reason: &'static str,
    },
    #[error("{0}")]
    Missing(&'static str),
}

/// `Ok(None)`: only help was asked for.
pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Args>, ArgsError> {
    let mut argv = argv.into_iter();
    let mode = match argv.next().as_deref() {
        None => return Err(ArgsError::NoMode),
        Some("-h" | "--help") => return Ok(None),
        Some("rate") => Mode::Rate,
        Some("max") => Mode::Max,
        Some("bulk") => Mode::Bulk,
        Some("handshake") => Mode::Handshake,
        Some(other) => return Err(ArgsError::UnknownMode(other.to_owned())),
    };
    let mut values: Vec<(String, String)> = Vec::new();
    while let Some(arg) = argv.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (option, value) = match arg.split_once('=') {
            Some((o, v)) => (o.to_owned(), v.to_owned()),
            None => {
                let v = argv.next().ok_or_else(|| ArgsError::NoValue(arg.clone()))?;
                (arg, v)
            }
        };
        values.push((option, value));
    }
    let mut args = Args {
        mode,
        target: "127.0.0.1:0".parse().expect("static address"),
        host: String::new(),
        path: "/".into(),
        rate: None,
        connections: if mode == Mode::Bulk { 1 } else { 16 },
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        cert_chain: None,
        key: None,
        bundle: None,
    };
    let mut target = None;
    for (option, value) in values {
        let invalid = |reason| ArgsError::Invalid {
            option: option.clone(),
            value: value.clone(),
            reason,
        };
        match option.as_str() {
            "--target" => target = Some(value.parse().map_err(|_| invalid("not HOST:PORT"))?),
            "--host" => args.host = value,
            "--path" => args.path = value,
            "--rate" => {
                args.rate = Some(match value.parse::<f64>() {
                    Ok(r) if r > 0.0 && r.is_finite() => r,
                    _ => return Err(invalid("not a positive number")),
                })
            }
            "--connections" => {
                args.connections = match value.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(invalid("not a positive integer")),
                }
            }
            "--duration" | "--warmup" => {
                let d = value
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| invalid("not a number of seconds"))?;
                if option == "--duration" {
                    if d.is_zero() {
                        return Err(invalid("must be positive"));
                    }
                    args.duration = d;
                } else {
                    args.warmup = d;
                }
            }
            "--cert-chain" => args.cert_chain = Some(value.into()),
            "--key" => args.key = Some(value.into()),
            "--bundle" => args.bundle = Some(value.into()),
            _ => return Err(ArgsError::Unknown(option)),
        }
    }
    args.target = target.ok_or(ArgsError::Missing("--target is required"))?;
    if args.host.is_empty() {
        args.host = args.target.to_string();
    }
    if mode == Mode::Rate && args.rate.is_none() {
        return Err(ArgsError::Missing("rate mode needs --rate"));
    }
    if mode == Mode::Handshake
        && (args.cert_chain.is_none() || args.key.is_none() || args.bundle.is_none())
    {
        return Err(ArgsError::Missing(
            "handshake mode needs --cert-chain, --key and --bundle",
        ));
    }
    Ok(Some(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn rate_mode_with_defaults() {
        let args = parse(argv("rate --target 127.0.0.1:8080 --rate 1000"))
            .unwrap()
            .unwrap();
        assert_eq!(args.mode, Mode::Rate);
        assert_eq!(args.rate, Some(1000.0));
        assert_eq!(args.host, "127.0.0.1:8080");
        assert_eq!(args.connections, 16);
        assert_eq!(
            (args.warmup, args.duration),
            (Duration::from_secs(2), Duration::from_secs(10))
        );
    }

    #[test]
    fn bulk_defaults_to_one_connection_and_options_take_either_form() {
        let args = parse(argv(
            "bulk --target=127.0.0.1:1 --path /big --duration=2.5 --host api.b:8080",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(args.connections, 1);
        assert_eq!(args.path, "/big");
        assert_eq!(args.duration, Duration::from_millis(2500));
        assert_eq!(args.host, "api.b:8080");
    }

    #[test]
    fn what_each_mode_needs_is_checked() {
        assert_eq!(
            parse(argv("rate --target 127.0.0.1:1")),
            Err(ArgsError::Missing("rate mode needs --rate"))
        );
        assert!(matches!(
            parse(argv("handshake --target 127.0.0.1:1 --key k")),
            Err(ArgsError::Missing(_))
        ));
        assert!(matches!(
            parse(argv("max --target nowhere")),
            Err(ArgsError::Invalid { .. })
        ));
        assert!(matches!(
            parse(argv("max --target 127.0.0.1:1 --connections 0")),
            Err(ArgsError::Invalid { .. })
        ));
        assert_eq!(
            parse(argv("flood")),
            Err(ArgsError::UnknownMode("flood".into()))
        );
        assert_eq!(parse(argv("max --help")), Ok(None));
    }
}
