//! The outbound side: the app's plaintext HTTP (HTTP/1.1, or HTTP/2 with prior knowledge as
//! gRPC clients send it) routed by authority to mesh upstreams over mTLS, with timeouts,
//! retries and trace propagation; HTTP to ExternalServices; and opaque TCP per bound port.
//!
//! A request goes down one stack, each layer a step of its own that may answer locally, in the
//! spirit of linkerd2-proxy's stack (explicit async steps rather than tower services: no boxing
//! per request, and each step reads the one `Active` the request started with):
//!
//! 1. **resolve** the authority to a mesh host, an ExternalService (`egress`), or a refusal
//!    (REGISTRY_ONLY: 403);
//! 2. **normalize** the path (`path.rs`; 400 when it has no normal form);
//! 3. **route**: the first matching rule of the host (404 when none);
//! 4. per-route layers, in this order when a route asks for them: fault injection (`inject`:
//!    a delay, then perhaps the sidecar's own answer), the consistent-hash key; mirroring
//!    (`shadow`) starts once dispatch has the body;
//! 5. **dispatch** (`dispatch.rs`): tries, per-try and overall deadlines, retry budget, circuit
//!    breaking per try, endpoint choice (by hash key when there is one) and passive health
//!    (`upstream`, outlier detection); an Upgrade request (WebSocket) is sent once and, on
//!    101, spliced (`upgrade.rs`).
//!
//! Every answer, proxied or local, leaves through one `Exchange::finish`.

mod dispatch;
mod egress;
pub mod gateway;
mod inject;
mod shadow;
mod tcp;

use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::exchange::Exchange;
use crate::http::{
    accept_loop, decided_path, local_reply, normalize_path, serve_connection, BAD_PATH,
};
use crate::protocol::Serve;
use crate::routing::{self, Host};
use crate::state::{Active, Shared};
use crate::upgrade;

pub use tcp::serve_tcp;
pub(crate) use tcp::{tcp_connection, tls_connection};

pub async fn serve_http(shared: Arc<Shared>, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    accept_loop(listener, shutdown, move |tcp| {
        let shared = shared.clone();
        // The calling workload's address, for routes that hash on it.
        let peer = tcp.peer_addr().ok().map(|a| crate::hash::PeerIp(a.ip()));
        async move {
            let stop = shared.shutdown.clone();
            serve_connection(tcp, Serve::Either, stop, move |mut req| {
                if let Some(peer) = peer {
                    req.extensions_mut().insert(peer);
                }
                request(shared.clone(), req, None)
            })
            .await;
        }
    })
    .await;
}

fn me(active: &Active) -> String {
    format!(
        "{}/{}",
        active.config.workload.namespace, active.config.workload.service
    )
}

/// The authority a request names: HTTP/2's `:authority`, else HTTP/1.1's `Host`.
fn named_authority<B>(req: &http::Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

fn authority<B>(req: &http::Request<B>) -> String {
    named_authority(req).unwrap_or_default()
}

/// One request from the app. `fallback` is the "ns/service:port" upstream that a transparently
/// captured connection's original destination maps to, used when the authority names none
/// (a client that called an address rather than a service name).
pub(crate) async fn request(
    shared: Arc<Shared>,
    mut req: http::Request<hyper::body::Incoming>,
    fallback: Option<String>,
) -> http::Response<Body> {
    // An HTTP/2 client's WebSocket (extended CONNECT, at a gateway) is routed as its HTTP/1.1
    // Upgrade form, and answered 200 rather than 101 (see `mesh`).
    upgrade::from_extended_connect(&mut req);
    let active = shared.active.load_full();
    let config = &active.config;
    let authority = authority(&req);
    let mut ex = Exchange::begin(
        "outbound",
        &req,
        config.telemetry.sampling_percent,
        &active.revision,
    );
    ex.source = active.spiffe_id.clone();
    let req = ex.count_request(req);
    // 1. resolve
    let mut host = active.routes.host(&authority);
    if host.is_none() {
        if let Some((dest, route)) = egress::http_destination(&active, &authority) {
            return egress::http(&shared, &active, ex, dest, route, req).await;
        }
        host = fallback.as_deref().and_then(|k| active.routes.service(k));
    }
    let Some(host) = host else {
        // REGISTRY_ONLY: only destinations the intent lets this workload call have a route.
        ex.destination = Arc::from(authority.as_str());
        let reply = local_reply(
            StatusCode::FORBIDDEN,
            "outbound: no route",
            &config.revision,
            format!(
                "{} has no route to {authority:?}: it is not a destination this workload may call: {} (revision {})",
                me(&active),
                routing::refused_by(&config.outbound, &authority),
                config.revision
            ),
        );
        return ex.finish(&shared.telemetry, "outbound: no route", reply, |_| {
            Vec::new()
        });
    };
    ex.destination = Arc::from(host.service.as_str());
    ex.port = host.port;
    mesh(&shared, &active, ex, host, &authority, req).await
}

/// Steps 2–5 for a mesh destination.
async fn mesh(
    shared: &Shared,
    active: &Active,
    mut ex: Exchange,
    host: &Host,
    authority: &str,
    mut req: http::Request<Body>,
) -> http::Response<Body> {
    let revision = &active.config.revision;
    // 2. normalize, once, here, so the route chosen, the path forwarded and the callee's
    // authorization all see one spelling. Egress is left as the app wrote it: the outside
    // server is not ours to protect and may give different spellings meaning.
    let escaped = active.config.path_normalization.escaped_slashes;
    if let Err(e) = normalize_path(&mut req, escaped) {
        let reply = local_reply(
            StatusCode::BAD_REQUEST,
            BAD_PATH,
            revision,
            format!(
                "{} refused a request to {}: bad path: {e}",
                me(active),
                host.service
            ),
        );
        return ex.finish(&shared.telemetry, BAD_PATH, reply, |_| Vec::new());
    }
    ex.path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // 3. route
    let Some(route) = host.route(&ex.method, decided_path(&req), req.headers()) else {
        let reply = local_reply(
            StatusCode::NOT_FOUND,
            "outbound: no route",
            revision,
            format!(
                "no route of {} matches {} {}",
                host.service, ex.method, ex.path
            ),
        );
        return ex.finish(&shared.telemetry, "outbound: no route", reply, |_| {
            Vec::new()
        });
    };
    let tunnel = req.extensions().get::<upgrade::Tunnel>().is_some();
    let (mut parts, body, client_upgrade) = upgrade::split_request(req);
    ex.hop.propagate(&mut parts.headers);
    parts.uri = ex
        .path
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    if let Ok(v) = http::HeaderValue::from_str(authority) {
        parts.headers.insert(http::header::HOST, v);
    }
    // 4. per-route layers: fault injection, then the hash key.
    let fault = inject::apply(route, &parts.headers).await;
    if let Some(abort) = fault.abort {
        ex.response_flags = fault.flags(false, false);
        let reply = crate::fault::reply(abort, ex.protocol == "grpc", &route.config.name, revision);
        let attributes = |_: &Exchange| vec![("weft.route".into(), route.config.name.clone())];
        return ex.finish(&shared.telemetry, &route.config.name, reply, attributes);
    }
    let (key, set_cookie) = route
        .config
        .consistent_hash
        .as_ref()
        .map_or((None, None), |h| {
            let peer = parts.extensions.get::<crate::hash::PeerIp>().map(|p| p.0);
            crate::hash::request_key(h, &parts.headers, peer)
        });
    if let Some(key) = key {
        parts.extensions.insert(crate::hash::Key(key));
    }
    // 5. dispatch; the route's timeout starts after an injected delay, as Envoy's router's.
    let routed = ex.started + fault.delay.unwrap_or_default();
    let mut sent = match client_upgrade {
        Some(client) => dispatch::upgrade(shared, active, host, route, parts, body, client).await,
        None => {
            let target = dispatch::Target::mesh(host);
            dispatch::send(shared, active, &target, route, parts, body, routed).await
        }
    };
    ex.response_flags = fault.flags(sent.overflowed, sent.timed_out);
    if tunnel {
        upgrade::answer_tunnel(&mut sent.response);
    }
    if let Some(v) = set_cookie.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        sent.response
            .headers_mut()
            .append(http::header::SET_COOKIE, v);
    }
    sent.finish(ex, &shared.telemetry, route)
}
