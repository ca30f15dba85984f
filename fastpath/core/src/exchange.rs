//! One finishing step for every HTTP exchange, in both directions, whether a peer answered it
//! or the sidecar did (a 403, a 400 for a bad path, a 404 for no route, a 503 or 504): counted
//! in `istio_requests_total` and, once its response body ends, in `istio_request_bytes` /
//! `istio_response_bytes`; written to the access log once, and traced once. A reply that
//! skipped any of them would be invisible exactly when something is wrong.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};

use http::Response;
use tokio::time::Instant;

use crate::body::{counted, incoming, Body};
use crate::grpc;
use crate::http::Hop;
use crate::telemetry::{AccessLog, HostPort, RequestKey, Telemetry};

/// What an exchange's source and destination are until its direction sets them.
static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// What is known about an exchange when it begins; `finish` adds how it ended.
pub struct Exchange {
    pub direction: &'static str,
    /// The caller's SPIFFE ID ("unknown" for plaintext in PERMISSIVE mode), shared with the
    /// connection or the config it came from.
    pub source: Arc<str>,
    /// "ns/service" of the destination, or the authority asked for when it names none.
    pub destination: Arc<str>,
    pub port: u16,
    pub method: http::Method,
    /// The path as forwarded (normalized), with its query.
    pub path: String,
    /// "http" or "grpc" (Istio's `request_protocol`).
    pub protocol: &'static str,
    pub revision: Arc<str>,
    pub hop: Hop,
    pub started: Instant,
    /// Istio's response flags for what the sidecar did itself (`UO`, `FI`, `DI`); empty: none.
    pub response_flags: &'static str,
    /// The request body's bytes as they stream through (`count_request`), for
    /// `istio_request_bytes`.
    request_bytes: Arc<AtomicU64>,
}

impl Exchange {
    /// Begins an exchange: the trace it belongs to comes from the request's headers.
    pub fn begin<B>(
        direction: &'static str,
        req: &http::Request<B>,
        sampling_percent: f64,
        revision: &Arc<str>,
    ) -> Exchange {
        Exchange {
            direction,
            source: Arc::clone(&EMPTY),
            destination: Arc::clone(&EMPTY),
            port: 0,
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            protocol: if grpc::is_grpc(req.headers()) {
                "grpc"
            } else {
                "http"
            },
            revision: Arc::clone(revision),
            hop: Hop::begin(req.headers(), sampling_percent),
            started: Instant::now(),
            response_flags: "",
            request_bytes: Arc::default(),
        }
    }

    /// The request with its body counted as it is read, however far it is forwarded.
    pub fn count_request(&self, req: http::Request<hyper::body::Incoming>) -> http::Request<Body> {
        let seen = self.request_bytes.clone();
        req.map(|b| counted(incoming(b), seen))
    }

    /// Ends the exchange with `response`, which `decided_by` (a policy, a route, or the step
    /// that answered locally) decided. A gRPC caller is given the sidecar's own replies as
    /// gRPC statuses. `attributes` gives the direction's own span attributes from the exchange;
    /// it is called only for a span that is kept, so an unsampled request builds none of them.
    pub fn finish(
        self,
        telemetry: &Arc<Telemetry>,
        decided_by: &str,
        response: Response<Body>,
        attributes: impl FnOnce(&Exchange) -> Vec<(String, String)>,
    ) -> Response<Body> {
        let response = if self.protocol == "grpc" {
            grpc::local_reply(response)
        } else {
            response
        };
        let code = response.status().as_u16();
        let decided_by: Arc<str> = Arc::from(decided_by);
        let response = grpc::record(
            telemetry,
            RequestKey {
                direction: self.direction,
                source: self.source.clone(),
                destination: self.destination.clone(),
                port: self.port,
                code,
                policy: decided_by.clone(),
                protocol: self.protocol,
                grpc_status: None,
                response_flags: self.response_flags,
            },
            self.started,
            self.request_bytes.clone(),
            response,
        );
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let start_unix_ms = self.hop.start_unix_ms();
        // The span's strings first, and only when it is kept; the access log then takes the
        // exchange's own strings rather than copies.
        let trace_id = if self.hop.records(telemetry) {
            let trace_id = self.hop.trace_id();
            let mut span = vec![
                ("http.method".into(), self.method.to_string()),
                ("http.target".into(), self.path.clone()),
                ("http.status_code".into(), code.to_string()),
            ];
            span.extend(attributes(&self));
            span.push(("weft.revision".into(), self.revision.to_string()));
            let name = format!(
                "{} {}:{} {}",
                self.direction, self.destination, self.port, self.method
            );
            self.hop.finish(telemetry, name, span);
            trace_id
        } else {
            self.hop.ctx.trace_id
        };
        telemetry.log_access(AccessLog {
            start_unix_ms,
            direction: self.direction,
            destination: HostPort(self.destination, self.port),
            source: self.source,
            method: self.method,
            path: self.path,
            status: code,
            duration_ms,
            decided_by,
            trace_id,
            revision: self.revision,
            tcp: None,
            response_flags: self.response_flags,
        });
        response
    }
}
