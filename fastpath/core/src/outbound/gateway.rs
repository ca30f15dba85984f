//! The ingress gateway listener: TLS from clients outside the mesh, terminated with a
//! certificate read from files (`edge_tls`), then the outbound stack — by authority through
//! the gateway's routes to mesh upstreams, over mTLS with the gateway's own SPIFFE identity,
//! so the destination's AccessPolicies decide what the outside may reach.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use http::StatusCode;

use crate::exchange::Exchange;
use crate::http::{accept_loop, local_reply, serve_connection};
use crate::protocol::{HttpVersion, Serve};
use crate::state::Shared;
use crate::tunables::INBOUND_HANDSHAKE_TIMEOUT;

pub async fn serve(shared: Arc<Shared>, name: String, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    accept_loop(listener, shutdown, move |tcp| {
        connection(shared.clone(), name.clone(), tcp)
    })
    .await;
}

async fn connection(shared: Arc<Shared>, name: String, tcp: TcpStream) {
    let (acceptor, port) = {
        let active = shared.active.load();
        let Some(config) = active.gateway.get(&name) else {
            return;
        };
        let Some(l) = active.config.gateway.iter().find(|l| l.name == name) else {
            return;
        };
        (TlsAcceptor::from(config.clone()), l.port)
    };
    let Ok(Ok(stream)) =
        tokio::time::timeout(INBOUND_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
    else {
        return;
    };
    let version = HttpVersion::negotiated(stream.get_ref().1.alpn_protocol());
    let stop = shared.shutdown.clone();
    serve_connection(stream, Serve::Only(version), stop, move |req| {
        authenticated(shared.clone(), name.clone(), with_port(req, port))
    })
    .await;
}

/// The listener's end-user authentication, if any, before routing: a missing or invalid token
/// is answered 401 here, at the edge; a verified one has its claims forwarded (and is removed
/// unless the intent says to pass it on) like a sidecar's inbound does.
async fn authenticated(
    shared: Arc<Shared>,
    name: String,
    mut req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::body::Body> {
    let active = shared.active.load_full();
    let config = &active.config;
    let auth = config
        .gateway
        .iter()
        .find(|l| l.name == name)
        .and_then(|l| l.authentication.as_ref());
    if let Some(auth) = auth {
        match auth.authenticate(req.headers(), req.uri()) {
            Ok(user) => auth.prepare_upstream(user.as_ref(), req.headers_mut()),
            Err(refusal) => {
                let mut ex = Exchange::begin(
                    "outbound",
                    &req,
                    config.telemetry.sampling_percent,
                    &config.revision,
                );
                ex.source = config.workload.spiffe_id.clone();
                ex.destination = super::authority(&req);
                let policy = format!("{}: {}", auth.policy, refusal.reason());
                let realm = format!("{}/{}", config.workload.namespace, config.workload.service);
                let mut reply = local_reply(
                    StatusCode::UNAUTHORIZED,
                    &policy,
                    &config.revision,
                    format!("gateway {realm}: {policy} (revision {})", config.revision),
                );
                if let Ok(v) = http::HeaderValue::from_str(&refusal.challenge(&realm)) {
                    reply
                        .headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, v);
                }
                return ex.finish(&shared.telemetry, &policy, reply, vec![]);
            }
        }
    }
    super::request(shared, req, None).await
}

/// Routes are keyed by host and the listener's port as the intent names it. The port a client
/// dialled may differ (a load balancer's 443, the local runtime's bound port) or be left out:
/// the authority is routed, and passed on, as `host:<listener port>`.
fn with_port<B>(mut req: http::Request<B>, port: u16) -> http::Request<B> {
    let Some(authority) = super::named_authority(&req) else {
        return req;
    };
    let host = match authority.rsplit_once(':') {
        Some((host, p)) if p.parse::<u16>().is_ok() => host,
        _ => authority.as_str(),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    if let Ok(v) = http::HeaderValue::from_str(&format!("{host}:{port}")) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_gets_the_listeners_port() {
        let req = http::Request::builder()
            .uri("/x?y=1")
            .header("host", "shop.example.com")
            .body(())
            .unwrap();
        let req = with_port(req, 8443);
        assert_eq!(req.headers()["host"], "shop.example.com:8443");
        assert_eq!(req.uri(), "/x?y=1");
        let h2 = http::Request::builder()
            .uri("https://shop.example.com/x")
            .body(())
            .unwrap();
        assert_eq!(with_port(h2, 443).headers()["host"], "shop.example.com:443");
        let dialled = http::Request::builder()
            .uri("/")
            .header("host", "shop.example.com:9000")
            .body(())
            .unwrap();
        assert_eq!(
            with_port(dialled, 443).headers()["host"],
            "shop.example.com:443"
        );
    }
}
