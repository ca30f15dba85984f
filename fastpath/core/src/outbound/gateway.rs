//! The ingress gateway listeners. HTTPS: TLS from clients outside the mesh, terminated with a
//! certificate chosen by SNI (`edge_tls`), optionally with a client certificate required.
//! HTTP: plaintext HTTP/1.1 or h2c, routed the same way, or answered with a redirect to HTTPS.
//! Then the outbound stack — by authority through the gateway's routes (exact hostnames before
//! wildcard ones) to mesh upstreams, over mTLS with the gateway's own SPIFFE identity, so the
//! destination's AccessPolicies decide what the outside may reach.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::body::{full, Body};
use crate::config::{HttpsRedirect, ListenerProtocol};
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
    // The listener as the config in force describes it when the connection arrives: a reload
    // that turns on a redirect or changes certificates applies to the next connection.
    let (protocol, port, redirect, acceptor) = {
        let active = shared.active.load();
        let Some(l) = active.config.gateway.iter().find(|l| l.name == name) else {
            return;
        };
        let acceptor = active.gateway.get(&name).cloned().map(TlsAcceptor::from);
        (l.protocol, l.port, l.https_redirect, acceptor)
    };
    let stop = shared.shutdown.clone();
    if protocol == ListenerProtocol::Http {
        serve_connection(tcp, Serve::Either, stop, move |req| {
            let (shared, name) = (shared.clone(), name.clone());
            async move {
                match redirect {
                    Some(r) => redirect_to_https(&req, r),
                    None => {
                        authenticated(shared, name, forwarded(with_port(req, port), "http")).await
                    }
                }
            }
        })
        .await;
        return;
    }
    let Some(acceptor) = acceptor else {
        return;
    };
    // A client without an acceptable certificate, on an edge-mTLS listener, ends here.
    let Ok(Ok(stream)) =
        tokio::time::timeout(INBOUND_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
    else {
        return;
    };
    let version = HttpVersion::negotiated(stream.get_ref().1.alpn_protocol());
    serve_connection(stream, Serve::Only(version), stop, move |req| {
        authenticated(
            shared.clone(),
            name.clone(),
            forwarded(with_port(req, port), "https"),
        )
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
                    &active.revision,
                );
                ex.source = active.spiffe_id.clone();
                ex.destination = Arc::from(super::authority(&req));
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
                return ex.finish(&shared.telemetry, &policy, reply, |_| Vec::new());
            }
        }
    }
    super::request(shared, req, None).await
}

/// The scheme the client used, for the app (it sees the gateway's mTLS hop, not the client's).
fn forwarded<B>(mut req: http::Request<B>, proto: &'static str) -> http::Request<B> {
    req.headers_mut()
        .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    req
}

/// `Location: https://<host>[:port]<path?query>`; a request naming no host is refused, as a
/// redirect to nowhere would be.
fn redirect_to_https<B>(req: &http::Request<B>, r: HttpsRedirect) -> http::Response<Body> {
    let host = super::named_authority(req).map(|a| match a.rsplit_once(':') {
        Some((host, p)) if p.parse::<u16>().is_ok() => host.to_owned(),
        _ => a,
    });
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = host.and_then(|host| {
        let port = if r.port == 443 {
            String::new()
        } else {
            format!(":{}", r.port)
        };
        HeaderValue::from_str(&format!("https://{host}{port}{path}")).ok()
    });
    let mut resp = http::Response::new(full(Bytes::new()));
    match location {
        Some(location) => {
            *resp.status_mut() =
                StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            resp.headers_mut().insert(http::header::LOCATION, location);
        }
        None => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
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
    fn a_redirect_keeps_host_path_and_query_and_names_the_https_port() {
        let req = http::Request::builder()
            .uri("/a/b?c=1")
            .header("host", "shop.example.com:8080")
            .body(())
            .unwrap();
        let r = HttpsRedirect {
            port: 8443,
            status_code: 308,
        };
        let resp = redirect_to_https(&req, r);
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()["location"],
            "https://shop.example.com:8443/a/b?c=1"
        );
        let r = HttpsRedirect {
            port: 443,
            status_code: 301,
        };
        let resp = redirect_to_https(&req, r);
        assert_eq!(resp.status(), 301);
        assert_eq!(
            resp.headers()["location"],
            "https://shop.example.com/a/b?c=1"
        );
        let nameless = http::Request::builder().uri("/").body(()).unwrap();
        assert_eq!(redirect_to_https(&nameless, r).status(), 400);
    }

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
