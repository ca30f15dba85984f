//! The inbound listener: mTLS from peer sidecars (and plaintext in PERMISSIVE mode), the
//! port's authorization rules, then the local app.
//!
//! The HTTP version comes from the connection: whatever ALPN settled on with a peer sidecar
//! (`h2` or Weft's HTTP/1.1), either for plaintext. The app is spoken to as its port's
//! protocol says: h2c for `http2` and `grpc`, HTTP/1.1 for `http`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
// Latency is read on tokio's clock, like the outbound side's, so paused-time tests see one clock.
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::authz::{self, Peer, Request};
use crate::config::MtlsMode;
use crate::grpc;
use crate::http::{
    accept_loop, decided_path, incoming, local_reply, normalize_path, serve_connection,
    strip_hop_by_hop, Hop, BAD_PATH,
};
use crate::protocol::{HttpVersion, Serve};
use crate::proxy::Shared;
use crate::tcp::pipe;
use crate::telemetry::{AccessLog, RequestKey, TcpKey};
use crate::upstream::{connect_stream, Body, Transport};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
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
        let peer = Arc::new(peer);
        let shutdown = shared.shutdown.clone();
        serve_connection(stream, serve, shutdown, move |req| {
            request(shared.clone(), port.clone(), peer.clone(), req)
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
    mut req: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    let started = Instant::now();
    let active = shared.active.load_full();
    let config = &active.config;
    let Some(port) = active.inbound.get(&port_name) else {
        return local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-port",
            &config.revision,
            format!("port {port_name} is gone"),
        );
    };
    let destination = format!("{}/{}", config.workload.namespace, config.workload.service);
    let source = peer
        .as_ref()
        .as_ref()
        .map_or("unknown", |p| p.spiffe_id.as_str())
        .to_owned();
    // Normalized before authorization, and forwarded normalized, so that what was
    // authorized is what the app serves (path.rs has the rules).
    let normalized = normalize_path(&mut req, config.path_normalization.escaped_slashes);
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let is_grpc = grpc::is_grpc(req.headers());
    let hop = Hop::begin(req.headers(), config.telemetry.sampling_percent);
    let decision = match normalized {
        Ok(()) => authz::decide(
            port,
            peer.as_ref().as_ref(),
            Request {
                method: Some(method.as_str()),
                path: Some(decided_path(&req)),
            },
        ),
        Err(_) => authz::Decision {
            allowed: false,
            policy: BAD_PATH,
        },
    };
    let policy = decision.policy.to_owned();
    let response = if let Err(e) = normalized {
        local_reply(
            StatusCode::BAD_REQUEST,
            &policy,
            &config.revision,
            format!(
                "{destination}:{} refused {method} from {source}: bad path: {e}",
                port.port
            ),
        )
    } else if !decision.allowed {
        local_reply(
            StatusCode::FORBIDDEN,
            &policy,
            &config.revision,
            format!("{source} may not {method} {path} on {destination}:{}: denied by {policy} (revision {})", port.port, config.revision),
        )
    } else {
        forward(&shared, &active, &port_name, &hop, &source, req).await
    };
    let response = if is_grpc {
        grpc::local_reply(response)
    } else {
        response
    };
    let code = response.status().as_u16();
    let response = grpc::record(
        &shared,
        RequestKey {
            direction: "inbound",
            source: source.clone(),
            destination: destination.clone(),
            port: port.port,
            code,
            policy: policy.clone(),
            protocol: if is_grpc { "grpc" } else { "http" },
            grpc_status: None,
        },
        started,
        response,
    );
    shared.telemetry.log_access(AccessLog {
        start_unix_ms: hop.start_unix_ms(),
        direction: "inbound",
        source: source.clone(),
        destination: format!("{destination}:{}", port.port),
        method: method.to_string(),
        path: path.clone(),
        status: code,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        decided_by: policy.clone(),
        trace_id: hop.trace_id(),
        revision: config.revision.clone(),
    });
    hop.finish(
        &shared,
        format!("inbound {destination}:{} {method}", port.port),
        vec![
            ("http.method".into(), method.to_string()),
            ("http.target".into(), path),
            ("http.status_code".into(), code.to_string()),
            ("weft.source".into(), source),
            ("weft.policy".into(), policy),
            ("weft.revision".into(), config.revision.clone()),
        ],
    );
    response
}

/// The header that tells the app who called it: the caller's verified SPIFFE ID, or "unknown"
/// for plaintext in PERMISSIVE mode. Any value the caller sent is replaced, never passed on.
pub const PEER_HEADER: &str = "x-weft-peer";

async fn forward(
    shared: &Shared,
    active: &crate::proxy::Active,
    port_name: &str,
    hop: &Hop,
    source: &str,
    req: http::Request<hyper::body::Incoming>,
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
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    hop.propagate(&mut parts.headers);
    if let Ok(v) = http::HeaderValue::from_str(source) {
        parts.headers.insert(PEER_HEADER, v);
    }
    // The request keeps its authority (HTTP/2's `:authority`, HTTP/1.1's Host); the app's
    // connection puts it in the form its version sends.
    let upstream_req = http::Request::from_parts(parts, incoming(body));
    match app.send(&endpoint, &shared.tls, upstream_req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            http::Response::from_parts(parts, incoming(body))
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
    let destination = format!(
        "{}/{}",
        active.config.workload.namespace, active.config.workload.service
    );
    let key = TcpKey {
        direction: "inbound",
        source: peer
            .as_ref()
            .map_or("unknown".into(), |p| p.spiffe_id.clone()),
        destination,
        port: port.port,
    };
    if !authz::decide(port, peer.as_ref(), Request::default()).allowed {
        shared.telemetry.record_tcp(key, |s| s.denied += 1);
        return; // closing is the only answer TCP has
    }
    let Some(app) = active.apps.get(&port_name) else {
        return;
    };
    let Some(endpoint) = app.pick() else { return };
    let Ok(mut upstream) = connect_stream(&endpoint.addr, &Transport::Plain, &shared.tls).await
    else {
        return;
    };
    pipe(&shared.telemetry, key, &mut stream, &mut upstream).await;
}
