//! gRPC through the mesh: telling a call from other HTTP, answering one the sidecar refuses in
//! gRPC's own terms, and counting each call by its `grpc-status`.
//!
//! gRPC carries a call's outcome in `grpc-status`, normally a trailer after the response body,
//! and its clients report any HTTP status but 200 as a transport failure (a 403 shows up as
//! "Received http2 header with status: 403"). So a reply the sidecar makes itself — a policy's
//! 403, no route, a timeout — goes to a gRPC caller as Envoy sends it: HTTP 200 "trailers-only"
//! (one HEADERS frame that ends the stream) with `grpc-status` mapped from the HTTP status and
//! the explanation, naming the policy and revision, in `grpc-message`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use tokio::time::Instant;

use crate::body::full;
use crate::body::{Body, BoxError};
use crate::http::LocalReply;
use crate::telemetry::{RequestKey, Telemetry};

pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";

/// gRPC status codes the sidecar answers with (grpc/doc/statuscodes.md).
pub mod status {
    pub const UNKNOWN: u16 = 2;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
    pub const UNAUTHENTICATED: u16 = 16;
}

/// Whether a request is a gRPC call: its content type is `application/grpc` or a variant
/// (`application/grpc+proto`, `application/grpc;charset=…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// The gRPC status for a sidecar's own HTTP status: gRPC's HTTP-to-gRPC mapping
/// (grpc/doc/http-grpc-status-mapping.md), except that 504 — always a route's timeout here —
/// is DEADLINE_EXCEEDED, as it is to the caller.
pub fn status_for(http: StatusCode) -> u16 {
    match http.as_u16() {
        400 => status::INTERNAL,
        401 => status::UNAUTHENTICATED,
        403 => status::PERMISSION_DENIED,
        404 => status::UNIMPLEMENTED,
        504 => status::DEADLINE_EXCEEDED,
        429 | 502 | 503 => status::UNAVAILABLE,
        _ => status::UNKNOWN,
    }
}

/// `grpc-status` as found in headers or trailers.
pub fn status_in(headers: &HeaderMap) -> Option<u16> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A reply the sidecar made itself, as a gRPC caller must get it: HTTP 200, trailers-only,
/// with `grpc-status` and `grpc-message`; the `x-weft-policy` and `x-weft-revision` headers stay.
/// Any other response (the upstream's) passes untouched.
pub fn local_reply(resp: Response<Body>) -> Response<Body> {
    let Some(LocalReply { message }) = resp.extensions().get::<LocalReply>().cloned() else {
        return resp;
    };
    let code = status_for(resp.status());
    let (mut parts, _) = resp.into_parts();
    parts.extensions.remove::<LocalReply>(); // converted once, however many layers ask
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&encode_message(&message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    Response::from_parts(parts, full(Bytes::new()))
}

/// Counts a request in `istio_requests_total`, and its body sizes in `istio_request_bytes` /
/// `istio_response_bytes` when its response body ends (or is dropped): `request_bytes` is the
/// caller's body as counted while it streamed. A gRPC call is counted when its status is
/// known: at once for a trailers-only reply, else when its trailers arrive (or the stream ends
/// without them), so the count carries `grpc_response_status` and the latency covers the
/// whole call, streams included.
pub fn record(
    telemetry: &Arc<Telemetry>,
    mut key: RequestKey,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
    resp: Response<Body>,
) -> Response<Body> {
    // Whether the duration still waits for the call's status (a streamed gRPC response).
    let mut pending = key.protocol == "grpc";
    if let Some(code) = status_in(resp.headers()).filter(|_| pending) {
        key.grpc_status = Some(code);
        pending = false;
    }
    // Counted now, the sizes later into the same slot; a pending call is counted at its end,
    // under the status it ended with.
    let counted = (!pending).then(|| telemetry.record_request(&key, started.elapsed()));
    let telemetry = telemetry.clone();
    resp.map(|body| {
        let observed = Observed {
            inner: body,
            response_bytes: 0,
            report: Some(move |code, response_bytes| {
                let slot = counted.unwrap_or_else(|| {
                    key.grpc_status = code;
                    telemetry.record_request(&key, started.elapsed())
                });
                slot.record_sizes(request_bytes.load(Ordering::Relaxed), response_bytes);
            }),
        };
        http_body_util::BodyExt::boxed(observed)
    })
}

/// A response body that counts its data bytes and reports once, with the call's
/// `grpc-status` if its trailers carry one: when it ends, fails or is dropped.
struct Observed<F: FnOnce(Option<u16>, u64) + Send + Sync + Unpin> {
    inner: Body,
    response_bytes: u64,
    report: Option<F>,
}

impl<F: FnOnce(Option<u16>, u64) + Send + Sync + Unpin> Observed<F> {
    fn report(&mut self, code: Option<u16>) {
        if let Some(report) = self.report.take() {
            report(code, self.response_bytes);
        }
    }
}

impl<F: FnOnce(Option<u16>, u64) + Send + Sync + Unpin> hyper::body::Body for Observed<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.response_bytes += data.len() as u64;
                }
                if let Some(trailers) = frame.trailers_ref() {
                    this.report(status_in(trailers));
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.report(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(Option<u16>, u64) + Send + Sync + Unpin> Drop for Observed<F> {
    fn drop(&mut self) {
        self.report(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("header"),
        );
        h
    }

    #[test]
    fn grpc_content_types_are_calls_and_look_alikes_are_not() {
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(is_grpc(&headers("application/grpc;charset=utf-8")));
        assert!(!is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn sidecar_statuses_map_to_grpc_statuses() {
        assert_eq!(status_for(StatusCode::FORBIDDEN), status::PERMISSION_DENIED);
        assert_eq!(status_for(StatusCode::NOT_FOUND), status::UNIMPLEMENTED);
        assert_eq!(
            status_for(StatusCode::SERVICE_UNAVAILABLE),
            status::UNAVAILABLE
        );
        assert_eq!(status_for(StatusCode::BAD_GATEWAY), status::UNAVAILABLE);
        assert_eq!(
            status_for(StatusCode::GATEWAY_TIMEOUT),
            status::DEADLINE_EXCEEDED
        );
        assert_eq!(status_for(StatusCode::IM_A_TEAPOT), status::UNKNOWN);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("denied by b/x"), "denied by b/x");
        assert_eq!(encode_message("100% é\n"), "100%25 %C3%A9%0A");
    }

    #[tokio::test]
    async fn a_denial_becomes_a_trailers_only_permission_denied() {
        let denied = crate::http::local_reply(
            StatusCode::FORBIDDEN,
            "b/no-admin",
            "rev@sha1:1",
            "denied by b/no-admin".into(),
        );
        let resp = local_reply(denied);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[GRPC_STATUS], "7");
        assert_eq!(resp.headers()[GRPC_MESSAGE], "denied by b/no-admin");
        assert_eq!(resp.headers()["x-weft-policy"], "b/no-admin");
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/grpc"
        );
        assert!(
            resp.body().is_end_stream(),
            "trailers-only: no body follows"
        );
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(body.is_empty());
    }

    #[test]
    fn an_upstream_response_is_not_rewritten() {
        let mut resp = Response::new(full(Bytes::from_static(b"x")));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        assert_eq!(local_reply(resp).status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn the_status_is_read_from_trailers_once() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"msg"))),
            Ok(Frame::trailers(trailers)),
        ];
        let inner = Frames(frames.into()).boxed();
        let log = seen.clone();
        let body = Observed {
            inner,
            response_bytes: 0,
            report: Some(move |code, bytes| log.lock().unwrap().push((code, bytes))),
        };
        let collected = body.collect().await.expect("body");
        assert_eq!(collected.trailers().map(status_in), Some(Some(5)));
        assert_eq!(*seen.lock().unwrap(), vec![(Some(5), 3)]);
    }

    /// A body that yields a list of frames.
    struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front())
        }
    }
}
