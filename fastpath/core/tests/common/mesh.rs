//! A small mesh on loopback: `a/web`'s sidecar calls `b/api` over mTLS, each `b/api` endpoint
//! being a real sidecar in front of an [`App`]. Every proxy runs on the test's runtime
//! (`Proxy::spawn_on`), so with `start_paused` the whole mesh shares one paused clock.

use std::net::SocketAddr;

use bytes::Bytes;
use fastpath::{Listeners, Proxy};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::app::App;
use super::pki::{Ca, Identity};

pub const TRUST_DOMAIN: &str = "test.local";
pub const WEB_ID: &str = "spiffe://test.local/ns/a/sa/web";
pub const API_ID: &str = "spiffe://test.local/ns/b/sa/api";
pub const DB_ID: &str = "spiffe://test.local/ns/c/sa/db";
pub const REVISION: &str = "test@sha1:0000000000000000000000000000000000000001";
/// The authority the app of `a/web` calls `b/api` by.
pub const API_HOST: &str = "api.b:8080";

pub struct Pki {
    pub ca: Ca,
    pub web: Identity,
    pub api: Identity,
    pub db: Identity,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("weft test CA");
        Pki {
            web: ca.issue(WEB_ID),
            api: ca.issue(API_ID),
            db: ca.issue(DB_ID),
            ca,
        }
    }
}

pub fn workload(namespace: &str, service: &str, spiffe_id: &str) -> Value {
    json!({
        "namespace": namespace,
        "service": service,
        "serviceAccount": service,
        "spiffeId": spiffe_id,
    })
}

/// `b/api`'s sidecar config: port `http` (8080) takes any method and path from namespace `a`
/// except `/admin/*`, which policy `b/no-admin` denies; everyone else meets the default deny.
pub fn api_config() -> String {
    json!({
        "schemaVersion": "weft.dev/proxyconfig/v1",
        "revision": REVISION,
        "trustDomain": TRUST_DOMAIN,
        "mtls": "STRICT",
        "workload": workload("b", "api", API_ID),
        "inbound": [{
            "name": "http",
            "port": 8080,
            "targetPort": 8080,
            "protocol": "http",
            "rules": [
                {"policy": "b/no-admin", "action": "DENY", "peers": {"namespaces": ["a"]},
                 "paths": [{"prefix": "/admin/"}]},
                {"policy": "b/api-from-a", "action": "ALLOW", "peers": {"namespaces": ["a"]}},
            ],
            "defaultAction": "DENY",
            "defaultPolicy": "Mesh/mesh defaultPolicy: deny",
        }],
        "outbound": {"http": [], "tcp": [], "egress": [], "clusters": []},
        "telemetry": {"samplingPercent": 0.0},
    })
    .to_string()
}

/// `a/web`'s sidecar config: `routes` for host `api.b:8080`, over `clusters`. Every request
/// is traced, so a test can read how many tries one took from its span.
pub fn web_config(routes: Value, clusters: Value) -> String {
    json!({
        "schemaVersion": "weft.dev/proxyconfig/v1",
        "revision": REVISION,
        "trustDomain": TRUST_DOMAIN,
        "mtls": "STRICT",
        "workload": workload("a", "web", WEB_ID),
        "inbound": [],
        "outbound": {
            "http": [{
                "service": "b/api",
                "hostnames": ["api.b"],
                "port": 8080,
                "routes": routes,
            }],
            "tcp": [],
            "egress": [],
            "clusters": clusters,
        },
        "telemetry": {"samplingPercent": 100.0},
    })
    .to_string()
}

/// A cluster of `b/api` endpoints; `load_balancer` is "ROUND_ROBIN" or "LEAST_REQUEST".
pub fn cluster(name: &str, load_balancer: &str, endpoints: &[&str]) -> Value {
    json!({
        "name": name,
        "service": "b/api",
        "spiffeId": API_ID,
        "protocol": "http",
        "loadBalancer": load_balancer,
        "endpoints": {"static": endpoints, "port": 8080},
    })
}

/// An endpoint of `b/api`: its sidecar, in front of its app.
pub struct ApiEndpoint {
    pub app: App,
    pub proxy: Proxy,
    /// Where the sidecar's mTLS listener is: the address `a/web`'s config names.
    pub addr: String,
}

/// Starts `b/api`'s sidecar for `app`, holding `who`'s certificate (normally `pki.api`).
pub fn api_endpoint(app: App, who: &Identity) -> ApiEndpoint {
    let listeners: Listeners = serde_json::from_value(json!({
        "inbound": {"http": "127.0.0.1:0"},
        "app": {"http": app.addr.to_string()},
    }))
    .expect("listeners");
    let proxy = Proxy::spawn_on(
        &tokio::runtime::Handle::current(),
        &api_config(),
        who.material(),
        listeners,
    )
    .expect("b/api sidecar starts");
    let addr = proxy.bound["inbound:http"].to_string();
    ApiEndpoint { app, proxy, addr }
}

/// Starts `a/web`'s sidecar with an outbound HTTP listener; returns it and that listener.
pub fn web_sidecar(pki: &Pki, config: &str) -> (Proxy, SocketAddr) {
    let listeners = Listeners {
        outbound_http: Some("127.0.0.1:0".parse().expect("address")),
        ..Listeners::default()
    };
    let proxy = Proxy::spawn_on(
        &tokio::runtime::Handle::current(),
        config,
        pki.web.material(),
        listeners,
    )
    .expect("a/web sidecar starts");
    let addr = proxy.bound["outbound:http"];
    (proxy, addr)
}

/// An address nothing listens on: connecting is refused.
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").to_string()
    // the listener closes here; the port stays unused for the test's short life
}

/// How many tries each outbound request took, oldest first, from `a/web`'s spans.
pub fn tries(web: &Proxy) -> Vec<u32> {
    web.telemetry()
        .drain_spans(usize::MAX)
        .iter()
        .filter(|s| s.name.starts_with("outbound"))
        .filter_map(|s| {
            s.attributes
                .iter()
                .find(|(k, _)| k == "weft.tries")
                .and_then(|(_, v)| v.parse().ok())
        })
        .collect()
}

/// `a/web`'s app: one keep-alive HTTP/1.1 connection to its sidecar's outbound listener.
/// Dropping it hangs up, like an app that gives up on a request.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Longer than any test's timeouts: a reply that takes this long is never coming.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What came back: status and body.
pub type Reply = (u16, String);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect to a/web");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        let connection = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, connection }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(http::Method::GET, path, Bytes::new()).await
    }

    /// A GET with another authority than [`API_HOST`].
    pub async fn get_from(&mut self, host: &str, path: &str) -> Reply {
        self.send_to(host, http::Method::GET, path, Bytes::new())
            .await
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> Reply {
        self.send(http::Method::POST, path, body).await
    }

    async fn send(&mut self, method: http::Method, path: &str, body: Bytes) -> Reply {
        self.send_to(API_HOST, method, path, body).await
    }

    async fn send_to(
        &mut self,
        host: &str,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Reply {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Full::new(body))
            .expect("request");
        let exchange = async {
            self.sender.ready().await.expect("connection ready");
            let resp = self.sender.send_request(req).await.expect("a reply");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("reply body");
            (
                status,
                String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            )
        };
        // On a paused clock a stuck request would not hang but spin: time leaps from timer to
        // timer (the DNS refresh loop has one) for ever. Fail it instead.
        tokio::time::timeout(REPLY_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("no reply within {REPLY_TIMEOUT:?}"))
    }
}

/// Who answered a reply from an [`App`]: its name.
pub fn answered_by(reply: &Reply) -> &str {
    reply.1.split(' ').next().unwrap_or_default()
}
