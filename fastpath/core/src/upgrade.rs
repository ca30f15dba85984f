//! HTTP/1.1 Upgrade (RFC 9110 §7.8), which WebSocket uses: the request is authorized and routed
//! like any other, its `Upgrade` and `Connection: upgrade` headers are kept (they are hop-by-hop,
//! so the usual stripping would drop them and the app would never switch), and once the far
//! side answers 101 the two upgraded connections are piped both ways, counted as TCP.
//!
//! Between sidecars this rides the HTTP/1.1 connection (`weft/http1` over mTLS) that `http`
//! ports use. An `http2`/`grpc` cluster speaks HTTP/2 between sidecars, where Upgrade does not
//! exist: there the handshake travels as an RFC 8441 extended CONNECT stream (`:method
//! CONNECT`, `:protocol websocket`, the path and the WebSocket headers kept) on the shared mTLS
//! connection, answered 200 by the called sidecar and turned back into a 101 for the caller's
//! app. A received extended CONNECT is rewritten at once to the HTTP/1.1 Upgrade `GET` it
//! stands for, so routing, authorization (method `GET`, the normalized path), logs and the
//! app see one form of a WebSocket handshake; apps are always asked in HTTP/1.1, as WebSocket
//! servers expect, over a connection of its own.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use hyper::ext::Protocol;
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

/// The protocol an HTTP/1.1 Upgrade request asks for (`websocket`), if it is one.
fn asked(parts: &http::request::Parts) -> Option<HeaderValue> {
    let protocol = parts.headers.get(http::header::UPGRADE)?;
    (parts.method == Method::GET && has_upgrade_token(&parts.headers)).then(|| protocol.clone())
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

/// Marks a request that arrived as an HTTP/2 extended CONNECT: its caller expects 200, not 101.
#[derive(Debug, Clone, Copy)]
pub struct Tunnel;

/// Rewrites an HTTP/2 extended CONNECT (RFC 8441) to the HTTP/1.1 Upgrade `GET` it stands for,
/// marked `Tunnel`. Its stream's `OnUpgrade` stays in the extensions, for `split_request`.
/// A handshake with no `Sec-WebSocket-Key` (RFC 8441 drops it) is given one, for the app.
pub fn from_extended_connect<B>(req: &mut http::Request<B>) {
    if req.method() != Method::CONNECT {
        return;
    }
    let Some(protocol) = req.extensions_mut().remove::<Protocol>() else {
        return; // a plain CONNECT: not ours to carry; routing refuses it
    };
    let Ok(value) = HeaderValue::from_str(protocol.as_str()) else {
        return;
    };
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    if value.as_bytes().eq_ignore_ascii_case(b"websocket")
        && !headers.contains_key(http::header::SEC_WEBSOCKET_KEY)
    {
        if let Ok(key) = HeaderValue::from_str(&websocket_key(rand::random())) {
            headers.insert(http::header::SEC_WEBSOCKET_KEY, key);
        }
    }
    headers.insert(http::header::UPGRADE, value);
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    req.extensions_mut().insert(Tunnel);
}

/// An HTTP/1.1 Upgrade request made an extended CONNECT, for an HTTP/2 connection; the
/// protocol asked for, to put back on the answer (`tunnel_opened`). Other requests: none.
pub fn to_extended_connect(parts: &mut http::request::Parts) -> Option<HeaderValue> {
    let protocol = asked(parts)?;
    let name = protocol.to_str().ok()?.to_ascii_lowercase();
    parts.method = Method::CONNECT;
    parts.extensions.insert(Protocol::from(name.as_str()));
    parts.headers.remove(http::header::UPGRADE);
    parts.headers.remove(http::header::CONNECTION);
    Some(protocol)
}

/// The called sidecar's 200 to an extended CONNECT, as the caller's app expects it: 101
/// Switching Protocols with its `Upgrade` (the stream's `OnUpgrade` is left where it is).
pub fn tunnel_opened<B>(protocol: HeaderValue, resp: &mut http::Response<B>) {
    if resp.status() != StatusCode::OK {
        return;
    }
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, protocol);
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
}

/// The app's 101 as an extended CONNECT's caller must get it: 200, without the HTTP/1.1-only
/// `Upgrade` and `Connection` (RFC 8441 §5). Other answers pass unchanged.
pub fn answer_tunnel<B>(resp: &mut http::Response<B>) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().remove(http::header::UPGRADE);
    resp.headers_mut().remove(http::header::CONNECTION);
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn websocket_key(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn a_websocket_key_is_base64_of_sixteen_bytes() {
        let bytes = *b"\x00\xffthe sample nonce";
        let bytes: [u8; 16] = bytes[..16].try_into().unwrap();
        let key = websocket_key(bytes);
        assert_eq!(key, base64::engine::general_purpose::STANDARD.encode(bytes));
        assert_eq!(key.len(), 24);
    }

    #[test]
    fn an_upgrade_and_an_extended_connect_are_each_others_form() {
        let req = http::Request::builder()
            .uri("/ws/echo?room=1")
            .header("host", "api.b:8080")
            .header("upgrade", "WebSocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let protocol = to_extended_connect(&mut parts).expect("an upgrade");
        assert_eq!(parts.method, Method::CONNECT);
        assert_eq!(
            parts.extensions.get::<Protocol>().unwrap().as_str(),
            "websocket"
        );
        assert!(!parts.headers.contains_key("upgrade"));
        assert_eq!(
            parts.headers["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );

        let mut received = http::Request::from_parts(parts, ());
        from_extended_connect(&mut received);
        assert_eq!(received.method(), Method::GET);
        assert!(requested(&received), "the HTTP/1.1 form again");
        assert!(received.extensions().get::<Tunnel>().is_some());
        assert_eq!(received.uri(), "/ws/echo?room=1");

        let mut answer = http::Response::new(());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        answer
            .headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        answer_tunnel(&mut answer);
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(!answer.headers().contains_key("upgrade"));
        tunnel_opened(protocol, &mut answer);
        assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(answer.headers()["upgrade"], "WebSocket");
    }

    #[test]
    fn other_requests_are_left_alone() {
        let (mut parts, ()) = http::Request::builder()
            .method("POST")
            .uri("/x")
            .body(())
            .unwrap()
            .into_parts();
        assert!(to_extended_connect(&mut parts).is_none());
        let mut connect = http::Request::builder()
            .method("CONNECT")
            .uri("api.b:8080")
            .body(())
            .unwrap();
        from_extended_connect(&mut connect);
        assert_eq!(
            connect.method(),
            Method::CONNECT,
            "no :protocol: a plain CONNECT"
        );
        let mut key_less = http::Request::builder()
            .method("CONNECT")
            .uri("https://api.b:8080/ws")
            .extension(Protocol::from_static("websocket"))
            .body(())
            .unwrap();
        from_extended_connect(&mut key_less);
        assert_eq!(key_less.headers()["sec-websocket-key"].len(), 24);
    }
}
