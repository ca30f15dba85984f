//! HTTP/1.1 Upgrade (RFC 9110 §7.8), which WebSocket uses: the request is authorized and routed
//! like any other, its `Upgrade` and `Connection: upgrade` headers are kept (they are hop-by-hop,
//! so the usual stripping would drop them and the app would never switch), and once the far
//! side answers 101 the two upgraded connections are piped both ways, counted as TCP.
//!
//! Between sidecars this rides the HTTP/1.1 connection (`weft/http1` over mTLS) that `http`
//! ports use. An `http2`/`grpc` cluster speaks HTTP/2 between sidecars, where Upgrade does not
//! exist; such a request gets a 501 saying so rather than a silent failure.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::http::strip_hop_by_hop;
use crate::tcp::{pipe, Conn};
use crate::telemetry::Telemetry;

/// True for an HTTP/1.1 request that asks to switch protocols: an `Upgrade` header and the
/// `upgrade` token in `Connection`.
pub fn requested<B>(req: &http::Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(http::header::UPGRADE)
        && has_upgrade_token(req.headers())
}

fn has_upgrade_token(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A request split for forwarding: hop-by-hop headers stripped, except an Upgrade request's
/// own upgrade headers, whose `OnUpgrade` (the client's side of the switch) is returned.
pub fn split_request<B>(mut req: http::Request<B>) -> (http::request::Parts, B, Option<OnUpgrade>) {
    let client = requested(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_keeping_upgrade(&mut parts.headers, client.is_some());
    (parts, body, client)
}

/// Hop-by-hop headers stripped from a response, except a 101's upgrade headers.
pub fn strip_response(parts: &mut http::response::Parts) {
    let switching = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    strip_keeping_upgrade(&mut parts.headers, switching);
}

fn strip_keeping_upgrade(headers: &mut HeaderMap, keep: bool) {
    let protocol = keep
        .then(|| headers.get(http::header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(headers);
    if let Some(protocol) = protocol {
        headers.insert(http::header::UPGRADE, protocol);
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
}

/// Once both sides have switched, copies between them until each closes; the bytes count as
/// one TCP connection, accounted as `conn`. Runs on its own task: the 101 must reach the client first.
pub fn splice(telemetry: Arc<Telemetry>, conn: Conn, client: OnUpgrade, server: OnUpgrade) {
    tokio::spawn(async move {
        let (Ok(client), Ok(server)) = tokio::join!(client, server) else {
            return; // one side hung up before switching: nothing to pipe
        };
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        pipe(&telemetry, conn, &mut client, &mut server).await;
    });
}
