//! Small HTTP helpers shared by both directions: bodies, hop-by-hop headers, local replies,
//! the accept loop with graceful drain, and serving HTTP/1.1, HTTP/2 or either on a connection.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    HeaderName, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{full, Body};
use crate::path::{self, EscapedSlashes, PathError};
use crate::protocol::{HttpVersion, Serve};
use crate::telemetry::{new_span_id, unix_nanos, Span, Telemetry, TraceContext};
use crate::tunables::ACCEPT_BACK_OFF;

const HOPS: usize = 8;

/// Headers that describe one hop, not the message; never forwarded (RFC 9110 §7.6.1). Names,
/// not strings: a `&str` is parsed and classified again on every lookup, twice a request for
/// each of these.
static HOP_BY_HOP: [HeaderName; HOPS] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    UPGRADE,
];

/// W3C trace context, read and written on every request.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Removes hop-by-hop headers, except `te: trailers`: the one TE value HTTP/2 allows
/// (RFC 9113 §8.2.2), which gRPC clients send and gRPC servers require.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the handful of names a message carries finds which of these it has. Names
    // are told apart by their text (a length, then at most one comparison), not by comparing
    // each against all nine: that cost more than the rest of this function.
    let mut present = [false; HOPS];
    let mut framing = false;
    let mut close_field = false;
    for name in headers.keys() {
        match hop_index(name.as_str()) {
            Some(i) => present[i] = true,
            None if name == TRANSFER_ENCODING => framing = true,
            None => close_field |= name.as_str() == "close",
        }
    }
    if !framing && !present.contains(&true) {
        return;
    }
    let trailers = headers
        .get_all(TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // The names `Connection` lists are removed too. Nearly always it lists only `keep-alive`,
    // `close` or `upgrade`: names removed below anyway, or (`close`) removed if present, so
    // nothing is copied or looked up for them.
    let listed = headers.get(CONNECTION).and_then(|v| v.to_str().ok());
    let others = listed.is_some_and(|v| {
        v.split(',').map(str::trim).any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(t))
        })
    });
    if others {
        if let Some(listed) = listed.map(str::to_owned) {
            for name in listed.split(',') {
                headers.remove(name.trim());
            }
        }
    }
    if close_field {
        headers.remove("close");
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    // Framing is re-decided by hyper for each hop from the body it is given.
    if framing {
        headers.remove(TRANSFER_ENCODING);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Where a lower-case header name stands in [`HOP_BY_HOP`], if it is one of them.
fn hop_index(name: &str) -> Option<usize> {
    let i = match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-authenticate" => 2,
        "proxy-authorization" => 3,
        "proxy-connection" => 4,
        "te" => 5,
        "trailer" => 6,
        "upgrade" => 7,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i].as_str(), name);
    Some(i)
}

/// Marks a response the sidecar made itself, with what it says, so a gRPC caller can be
/// given it as a gRPC status instead (see `grpc::local_reply`).
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub message: String,
}

/// A reply the sidecar makes itself, always naming what decided and at which revision.
pub fn local_reply(
    status: StatusCode,
    decided_by: &str,
    revision: &str,
    message: String,
) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(format!("weft: {message}\n"))));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(LocalReply { message });
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(decided_by) {
        h.insert("x-weft-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(revision) {
        h.insert("x-weft-revision", v);
    }
    resp
}

/// What a 400 for a path with no normal form names as the deciding step.
pub const BAD_PATH: &str = "path-normalization";

/// Rewrites the request's path to its normal form, leaving the query as it came, so that what
/// authorization and routing decide on is exactly what the app receives. CONNECT (authority
/// form) carries no path and is left alone.
pub fn normalize_path<B>(
    req: &mut http::Request<B>,
    escaped: EscapedSlashes,
) -> Result<(), PathError> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(());
    };
    let normal = match path::normalize(pq.path(), escaped)? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(normal) => normal,
    };
    let rebuilt = match pq.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = req.uri().clone().into_parts();
    // Only characters the old path already held, or `%XX` escapes, appear: always valid.
    parts.path_and_query = Some(rebuilt.parse().map_err(|_| PathError::Unrepresentable)?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| PathError::Unrepresentable)?;
    Ok(())
}

/// The path authorization and routing see: normalized, without the query; `/` when absent.
pub fn decided_path<B>(req: &http::Request<B>) -> &str {
    match req.uri().path() {
        "" => "/",
        p => p,
    }
}

/// The trace a request belongs to (continued from `traceparent`, or new), and this hop's span.
pub struct Hop {
    pub ctx: TraceContext,
    pub span_id: String,
    pub started: SystemTime,
}

impl Hop {
    pub fn begin(headers: &HeaderMap, sampling_percent: f64) -> Hop {
        let ctx = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::from_traceparent)
            .unwrap_or_else(|| TraceContext::new_root(sampling_percent));
        Hop {
            ctx,
            span_id: new_span_id(),
            started: SystemTime::now(),
        }
    }

    pub fn propagate(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.ctx.traceparent(&self.span_id)) {
            headers.insert(TRACEPARENT, v);
        }
    }

    pub fn trace_id(&self) -> String {
        self.ctx.trace_id.clone()
    }

    pub fn start_unix_ms(&self) -> u128 {
        unix_nanos(self.started) / 1_000_000
    }

    /// Whether this hop's span will be kept: sampled, and something drains spans. Callers
    /// build a span's strings only when it is, since on an unsampled request they are the cost.
    pub fn records(&self, telemetry: &Telemetry) -> bool {
        self.ctx.sampled && telemetry.records_spans()
    }

    pub fn finish(self, telemetry: &Telemetry, name: String, attributes: Vec<(String, String)>) {
        if self.records(telemetry) {
            telemetry.record_span(Span {
                trace_id: self.ctx.trace_id,
                span_id: self.span_id,
                parent_span_id: self.ctx.parent_span_id,
                name,
                start_unix_nano: unix_nanos(self.started),
                end_unix_nano: unix_nanos(SystemTime::now()),
                attributes,
            });
        }
    }
}

/// Resolves once shutdown is signalled (at once if it already was).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it inside this future.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Accepts connections until shutdown, then waits for every connection it started to finish
/// (each finishes its in-flight requests and closes); the caller bounds the wait.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    on_connection: F,
) where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let live = Arc::new(());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    // Out of file descriptors (EMFILE, ENFILE) or memory: accept fails again at
                    // once, so retrying without a pause would spin a core and starve the very
                    // connections whose closing would free a descriptor.
                    Err(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(ACCEPT_BACK_OFF) => continue,
                            _ = stopped(&mut shutdown) => break,
                        }
                    }
                };
                let _ = tcp.set_nodelay(true);
                let token = live.clone();
                let work = on_connection(tcp);
                tokio::spawn(async move {
                    work.await;
                    drop(token);
                });
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    while Arc::strong_count(&live) > 1 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Serves HTTP on one connection as `serve` says until it closes, or until shutdown: then it
/// stops taking new requests (HTTP/2 sends GOAWAY), finishes those in flight and closes.
pub async fn serve_connection<S, F, Fut>(
    stream: S,
    serve: Serve,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
    });
    let io = TokioIo::new(stream);
    // Each arm drives its own connection type; HTTP/1.1 keeps hyper's plain server (no preface
    // read ahead) so the common case pays nothing for HTTP/2 support.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }};
    }
    match serve {
        // `with_upgrades`: a 101 hands the connection to `upgrade::splice` (WebSocket).
        Serve::Only(HttpVersion::Http1) => drive!(hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades()),
        Serve::Only(HttpVersion::Http2) => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            // RFC 8441: a peer sidecar carries a WebSocket handshake as an extended CONNECT.
            builder.enable_connect_protocol();
            drive!(builder.serve_connection(io, service))
        }
        Serve::Either => {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            drive!(builder.serve_connection_with_upgrades(io, service))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut h = headers(&[
            ("host", "api.b"),
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("proxy-connection", "close"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-end-to-end"]);
    }

    #[test]
    fn the_usual_connection_tokens_and_a_close_field_are_handled_without_a_lookup_by_name() {
        let mut h = headers(&[
            ("connection", "Keep-Alive, Close, UPGRADE"),
            ("keep-alive", "timeout=5"),
            ("close", "reserved, but seen"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-end-to-end"]);
        // A listed name in another case is still the header it names.
        let mut h = headers(&[("connection", "close, X-Hop"), ("x-hop", "1"), ("a", "b")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["a"]);
    }

    #[test]
    fn te_trailers_is_kept_alone() {
        let mut h = headers(&[
            ("te", "gzip"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-type", "te"]);
        assert_eq!(h.get_all(TE).iter().collect::<Vec<_>>(), ["trailers"]);
    }

    #[test]
    fn a_message_with_none_is_left_as_it_came() {
        let mut h = headers(&[
            ("host", "api.b"),
            ("accept", "*/*"),
            ("accept", "text/plain"),
        ]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        let mut only_framing = headers(&[("transfer-encoding", "chunked"), ("host", "api.b")]);
        strip_hop_by_hop(&mut only_framing);
        assert_eq!(names(&only_framing), ["host"]);
    }
}
