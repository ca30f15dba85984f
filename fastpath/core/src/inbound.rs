//! The inbound listener: mTLS from peer sidecars (and plaintext in PERMISSIVE mode), the
//! port's authorization rules, then the local app.
//!
//! The HTTP version comes from the connection: whatever ALPN settled on with a peer sidecar
//! (`h2` or Weft's HTTP/1.1), either for plaintext. The app is spoken to as its port's
//! protocol says: h2c for `http2` and `grpc`, HTTP/1.1 for `http`.

use std::sync::Arc;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::authz::{self, Peer, Request};
use crate::body::Body;
use crate::config::MtlsMode;
use crate::exchange::Exchange;
use crate::http::{
    accept_loop, decided_path, local_reply, normalize_path, serve_connection, Hop, BAD_PATH,
};
use crate::protocol::{HttpVersion, Serve};
use crate::state::{Active, Shared};
use crate::tcp::{pipe, Conn};
use crate::telemetry::TcpKey;
use crate::tunables::INBOUND_HANDSHAKE_TIMEOUT;
use crate::upgrade;
use crate::upstream::{connect_stream, Transport};

const TLS_HANDSHAKE_RECORD: u8 = 0x16;

pub async fn serve(shared: Arc<Shared>, port: String, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    accept_loop(listener, shutdown, move |tcp| {
        connection(shared.clone(), port.clone(), tcp)
    })
    .await;
}

async fn connection(shared: Arc<Shared>, port: String, tcp: TcpStream) {
    let mode = shared.active.load().config.mtls;
    let tls = match mode {
        MtlsMode::Strict => true,
        // PERMISSIVE: a TLS handshake starts with a handshake record; anything else is plaintext.
        MtlsMode::Permissive => {
            let mut first = [0u8; 1];
            matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE_RECORD)
        }
    };
    if !tls {
        return serve_stream(shared, port, None, Serve::Either, tcp).await;
    }
    let acceptor = TlsAcceptor::from(shared.tls.load().server.clone());
    // A failed handshake (no client certificate, unknown CA, expired) just closes: there is
    // no authenticated channel to explain anything on.
    let Ok(Ok(stream)) =
        tokio::time::timeout(INBOUND_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
    else {
        return;
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(crate::tls::spiffe_id)
        .and_then(|id| Peer::in_trust_domain(&id, &shared.active.load().config.trust_domain));
    if peer.is_none() {
        return; // verified chain, but no SPIFFE ID of this trust domain: not a mesh workload
    }
    let version = HttpVersion::negotiated(stream.get_ref().1.alpn_protocol());
    serve_stream(shared, port, peer, Serve::Only(version), stream).await;
}

async fn serve_stream<S>(
    shared: Arc<Shared>,
    port: String,
    peer: Option<Peer>,
    serve: Serve,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(protocol) = shared.active.load().inbound.get(&port).map(|p| p.protocol) else {
        return;
    };
    if protocol.is_http() {
        // The caller as every request's telemetry names it, made once per connection.
        let source: Arc<str> = Arc::from(peer.as_ref().map_or("unknown", |p| p.spiffe_id.as_str()));
        let peer = Arc::new(peer);
        let shutdown = shared.shutdown.clone();
        serve_connection(stream, serve, shutdown, move |req| {
            request(
                shared.clone(),
                port.clone(),
                peer.clone(),
                source.clone(),
                req,
            )
        })
        .await;
    } else {
        tcp(shared, port, peer, stream).await;
    }
}

async fn request(
    shared: Arc<Shared>,
    port_name: String,
    peer: Arc<Option<Peer>>,
    source: Arc<str>,
    mut req: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    let active = shared.active.load_full();
    let config = &active.config;
    // A WebSocket handshake a peer sent as an HTTP/2 extended CONNECT is decided, logged and
    // forwarded as the HTTP/1.1 Upgrade GET it stands for.
    upgrade::from_extended_connect(&mut req);
    // Normalized before authorization, and forwarded normalized, so that what was
    // authorized is what the app serves (path.rs has the rules).
    let normalized = normalize_path(&mut req, config.path_normalization.escaped_slashes);
    let mut ex = Exchange::begin(
        "inbound",
        &req,
        config.telemetry.sampling_percent,
        &active.revision,
    );
    let mut req = ex.count_request(req);
    ex.destination = active.workload.clone();
    ex.source = source;
    let Some(port) = active.inbound.get(&port_name) else {
        let reply = local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-port",
            &config.revision,
            format!("port {port_name} is gone"),
        );
        return ex.finish(&shared.telemetry, "no-port", reply, |_| Vec::new());
    };
    ex.port = port.port;
    let (source, destination, method) = (&ex.source, &ex.destination, &ex.method);
    let (policy, response) = match normalized {
        Err(e) => (
            BAD_PATH.to_owned(),
            local_reply(
                StatusCode::BAD_REQUEST,
                BAD_PATH,
                &config.revision,
                format!(
                    "{destination}:{} refused {method} from {source}: bad path: {e}",
                    port.port
                ),
            ),
        ),
        Ok(()) => {
            let user = port
                .authentication
                .as_ref()
                .map(|a| (a, a.authenticate(req.headers(), req.uri())));
            // An invalid token is answered 401 before any policy is consulted.
            if let Some((a, Err(refusal))) = &user {
                let policy = format!("{}: {}", a.policy, refusal.reason());
                let mut reply = local_reply(
                    StatusCode::UNAUTHORIZED,
                    &policy,
                    &config.revision,
                    format!("{destination}: {policy} (revision {})", config.revision),
                );
                if let Ok(v) = http::HeaderValue::from_str(&refusal.challenge(destination)) {
                    reply
                        .headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, v);
                }
                (policy, reply)
            } else {
                let user = match user {
                    Some((a, Ok(user))) => Some((a, user)),
                    _ => None,
                };
                let decision = authz::decide_for_user(
                    port,
                    peer.as_ref().as_ref(),
                    Request {
                        method: Some(method.as_str()),
                        path: Some(decided_path(&req)),
                    },
                    user.as_ref().and_then(|(_, u)| u.as_ref()),
                );
                let policy = decision.policy.to_owned();
                if decision.allowed {
                    if let Some((a, user)) = &user {
                        a.prepare_upstream(user.as_ref(), req.headers_mut());
                    }
                    let response =
                        forward(&shared, &active, &port_name, &ex.hop, source, req).await;
                    (policy, response)
                } else {
                    let path = &ex.path;
                    let reply = local_reply(
                    StatusCode::FORBIDDEN,
                    &policy,
                    &config.revision,
                    format!(
                        "{source} may not {method} {path} on {destination}:{}: denied by {policy} (revision {})",
                        port.port, config.revision
                    ),
                );
                    (policy, reply)
                }
            }
        }
    };
    let attributes = |ex: &Exchange| {
        vec![
            ("weft.source".into(), ex.source.to_string()),
            ("weft.policy".into(), policy.clone()),
        ]
    };
    ex.finish(&shared.telemetry, &policy, response, attributes)
}

/// The header that tells the app who called it: the caller's verified SPIFFE ID, or "unknown"
/// for plaintext in PERMISSIVE mode. Any value the caller sent is replaced, never passed on.
pub const PEER_HEADER: http::HeaderName = http::HeaderName::from_static("x-weft-peer");

async fn forward(
    shared: &Shared,
    active: &Active,
    port_name: &str,
    hop: &Hop,
    source: &str,
    req: http::Request<Body>,
) -> http::Response<Body> {
    let revision = &active.config.revision;
    let Some(app) = active.apps.get(port_name) else {
        return local_reply(
            StatusCode::BAD_GATEWAY,
            "no-app",
            revision,
            "no local app for this port".into(),
        );
    };
    let Some(endpoint) = app.pick() else {
        return local_reply(
            StatusCode::BAD_GATEWAY,
            "no-app",
            revision,
            "no local app address".into(),
        );
    };
    let tunnel = req.extensions().get::<upgrade::Tunnel>().is_some();
    let (mut parts, body, client_upgrade) = upgrade::split_request(req);
    hop.propagate(&mut parts.headers);
    if let Ok(v) = http::HeaderValue::from_str(source) {
        parts.headers.insert(PEER_HEADER, v);
    }
    // The request keeps its authority (HTTP/2's `:authority`, HTTP/1.1's Host); the app's
    // connection puts it in the form its version sends.
    let upstream_req = http::Request::from_parts(parts, body);
    match app.send(&endpoint, &shared.tls, upstream_req).await {
        Ok(mut resp) => {
            // The app agreed to switch (WebSocket): pipe the caller's connection to its own.
            if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
            {
                let key = TcpKey {
                    direction: "inbound",
                    source: source.to_owned(),
                    destination: active.workload.to_string(),
                    port: active.inbound.get(port_name).map_or(0, |p| p.port),
                };
                let server = hyper::upgrade::on(&mut resp);
                let conn = Conn::new(key, "upgrade", &active.config.revision);
                upgrade::splice(shared.telemetry.clone(), conn, client, server);
            }
            let (mut parts, body) = resp.into_parts();
            upgrade::strip_response(&mut parts);
            let mut resp = http::Response::from_parts(parts, body);
            if tunnel {
                upgrade::answer_tunnel(&mut resp);
            }
            resp
        }
        Err(e) => local_reply(
            StatusCode::BAD_GATEWAY,
            "app-unavailable",
            revision,
            format!("local app: {e}"),
        ),
    }
}

async fn tcp<S>(shared: Arc<Shared>, port_name: String, peer: Option<Peer>, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let active = shared.active.load_full();
    let Some(port) = active.inbound.get(&port_name) else {
        return;
    };
    let destination = active.workload.to_string();
    let key = TcpKey {
        direction: "inbound",
        source: peer
            .as_ref()
            .map_or("unknown".into(), |p| p.spiffe_id.clone()),
        destination,
        port: port.port,
    };
    let decision = authz::decide(port, peer.as_ref(), Request::default());
    let conn = Conn::new(key, decision.policy, &active.config.revision);
    if !decision.allowed {
        return conn.denied(&shared.telemetry); // closing is the only answer TCP has
    }
    let upstream = match active.apps.get(&port_name).and_then(|app| app.pick()) {
        Some(endpoint) => connect_stream(&endpoint.addr, &Transport::Plain, &shared.tls).await,
        None => return conn.connect_failed(&shared.telemetry),
    };
    match upstream {
        Ok(mut upstream) => pipe(&shared.telemetry, conn, &mut stream, &mut upstream).await,
        Err(_) => conn.connect_failed(&shared.telemetry),
    }
}
