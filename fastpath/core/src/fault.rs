//! Fault injection on a route: a fixed delay, an abort, or both, each for a percent of the
//! requests (and, optionally, only those whose headers match), as Istio's HTTPFaultInjection.
//!
//! The delay comes first, then the abort, so a request may be both delayed and aborted, as
//! in Envoy. Rolls are passed in so tests decide them; the request path rolls uniformly.

use std::time::Duration;

use crate::config::FaultPolicy;

/// What a faulted request gets instead of its upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub http_status: u16,
    /// For a gRPC caller: this status, trailers-only, instead of the one `http_status` maps to.
    pub grpc_status: Option<u16>,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

#[derive(Debug)]
pub struct Fault {
    delay: Option<(Duration, f64)>,
    abort: Option<(Abort, f64)>,
}

impl Fault {
    /// The delay and abort of a policy; its `headers` are matched by the route (`routing`).
    pub fn compile(config: &FaultPolicy) -> Fault {
        Fault {
            delay: config
                .delay
                .as_ref()
                .map(|d| (Duration::from_millis(d.fixed_ms), d.percent)),
            abort: config.abort.as_ref().map(|a| {
                (
                    Abort {
                        // A gRPC-only abort still needs an HTTP status for plain callers:
                        // 503, as a sidecar's own "unavailable".
                        http_status: a.http_status.unwrap_or(503),
                        grpc_status: a.grpc_status,
                    },
                    a.percent,
                )
            }),
        }
    }

    /// Decides for one request whose headers matched; each roll is uniform in [0, 100).
    pub fn decide(&self, delay_roll: f64, abort_roll: f64) -> Decision {
        Decision {
            delay: self
                .delay
                .filter(|(_, percent)| delay_roll < *percent)
                .map(|(d, _)| d),
            abort: self
                .abort
                .filter(|(_, percent)| abort_roll < *percent)
                .map(|(a, _)| a),
        }
    }
}

/// The sidecar's own answer to an aborted request. A gRPC call given a `grpcStatus` gets it
/// trailers-only; any other gets `httpStatus` as a local reply (which a gRPC caller then
/// receives as the gRPC status it maps to, like every reply the sidecar makes itself).
pub fn reply(
    abort: Abort,
    grpc_call: bool,
    route: &str,
    revision: &str,
) -> http::Response<crate::body::Body> {
    let message = format!("fault injected by route {route}: abort");
    if let (true, Some(code)) = (grpc_call, abort.grpc_status) {
        let mut resp = http::Response::new(crate::body::full(bytes::Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(crate::grpc::GRPC_STATUS, http::HeaderValue::from(code));
        if let Ok(v) = http::HeaderValue::from_str(&crate::grpc::encode_message(&message)) {
            h.insert(crate::grpc::GRPC_MESSAGE, v);
        }
        if let Ok(v) = http::HeaderValue::from_str(route) {
            h.insert("x-weft-policy", v);
        }
        return resp;
    }
    let status = http::StatusCode::from_u16(abort.http_status)
        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    crate::http::local_reply(status, route, revision, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FaultAbort, FaultDelay};

    fn fault() -> Fault {
        Fault::compile(&FaultPolicy {
            delay: Some(FaultDelay {
                fixed_ms: 250,
                percent: 50.0,
            }),
            abort: Some(FaultAbort {
                http_status: Some(418),
                grpc_status: None,
                percent: 10.0,
            }),
            headers: vec![],
        })
    }

    #[test]
    fn percents_decide_each_part_on_its_own_roll() {
        let f = fault();
        assert_eq!(f.decide(99.0, 99.0), Decision::default());
        assert_eq!(f.decide(49.9, 99.0).delay, Some(Duration::from_millis(250)));
        let both = f.decide(0.0, 9.99);
        assert_eq!(both.delay, Some(Duration::from_millis(250)));
        assert_eq!(both.abort.map(|a| a.http_status), Some(418));
        assert_eq!(f.decide(99.0, 10.0).abort, None, "10% is [0, 10)");
    }

    #[test]
    fn a_uniform_roll_aborts_the_configured_share() {
        let f = fault();
        let aborted = (0..10_000)
            .filter(|i| f.decide(100.0, f64::from(*i) / 100.0).abort.is_some())
            .count();
        assert_eq!(aborted, 1000);
    }

    #[test]
    fn a_grpc_only_abort_answers_plain_callers_503() {
        let f = Fault::compile(&FaultPolicy {
            delay: None,
            abort: Some(FaultAbort {
                http_status: None,
                grpc_status: Some(8),
                percent: 100.0,
            }),
            headers: vec![],
        });
        let a = f.decide(0.0, 0.0).abort.unwrap();
        assert_eq!((a.http_status, a.grpc_status), (503, Some(8)));
    }
}
