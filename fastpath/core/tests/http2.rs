//! HTTP/2 through the mesh: which version each hop speaks, and that gRPC's needs (trailers,
//! streamed bodies, statuses for refusals) survive two sidecars.
//!
//! `a/web`'s app speaks h2c (prior knowledge) or HTTP/1.1 to its outbound listener; `b/api`
//! has a `grpc` port in front of an h2c app and an `http` port in front of an HTTP/1.1 app.
//! Between them, a counting relay shows how many mTLS connections the calls used.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use common::app::App;
use common::mesh::{workload, Client, Pki, API_ID, REVISION, TRUST_DOMAIN};
use fastpath::{Listeners, Proxy};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const GRPC_HOST: &str = "api.b:9090";

/// A body made of the frames given: data, then trailers.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
}

/// One request as the h2c app saw it.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    authority: Option<String>,
    path: String,
    headers: HeaderMap,
}

/// A gRPC-shaped h2c app: answers three messages and a `grpc-status: 0` trailer, and counts
/// the connections it accepted. `/pkg.Service/Unavailable` answers 503; `/pkg.Service/Slow`
/// answers only after a minute.
#[derive(Clone, Default)]
struct GrpcApp {
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl GrpcApp {
    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                app.connections.fetch_add(1, Ordering::SeqCst);
                let app = app.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let app = app.clone();
                    async move { Ok::<_, hyper::Error>(app.answer(req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        addr
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Frames> {
        let (parts, body) = req.into_parts();
        let _ = body.collect().await;
        self.seen.lock().unwrap().push(Seen {
            version: parts.version,
            authority: parts.uri.authority().map(|a| a.to_string()),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
        });
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut frames: VecDeque<Frame<Bytes>> = ["one", "two", "three"]
            .into_iter()
            .map(|m| Frame::data(Bytes::from(m)))
            .collect();
        frames.push_back(Frame::trailers(trailers));
        if parts.uri.path() == "/pkg.Service/Slow" {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
        let mut resp = Response::new(Frames(frames));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        if parts.uri.path() == "/pkg.Service/Unavailable" {
            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        resp
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// `b/api`: port `grpc` (9090, h2c app) where `/pkg.Admin/*` is denied, port `http` (8080).
fn api_config() -> String {
    let port = |name: &str, number: u16, protocol: &str| {
        json!({
            "name": name, "port": number, "targetPort": number, "protocol": protocol,
            "rules": [
                {"policy": "b/no-admin", "action": "DENY", "peers": {"namespaces": ["a"]},
                 "paths": [{"prefix": "/pkg.Admin/"}]},
                {"policy": "b/api-from-a", "action": "ALLOW", "peers": {"namespaces": ["a"]}},
            ],
            "defaultAction": "DENY",
            "defaultPolicy": "Mesh/mesh defaultPolicy: deny",
        })
    };
    json!({
        "schemaVersion": "weft.dev/proxyconfig/v1",
        "revision": REVISION,
        "trustDomain": TRUST_DOMAIN,
        "mtls": "STRICT",
        "workload": workload("b", "api", API_ID),
        "inbound": [port("grpc", 9090, "grpc"), port("http", 8080, "http")],
        "outbound": {"http": [], "tcp": [], "egress": [], "clusters": []},
        "telemetry": {"samplingPercent": 0.0},
    })
    .to_string()
}

/// `a/web`: `api.b:9090` to the grpc cluster, `api.b:8080` to the http one; both retry 5xx
/// twice, within 2 s.
fn web_config(grpc_endpoint: &str, http_endpoint: &str) -> String {
    let host = |port: u16, cluster: &str| {
        json!({"service": "b/api", "hostnames": ["api.b"], "port": port, "routes": [
            {"name": format!("b/api:{port}"), "matches": [],
             "backends": [{"cluster": cluster, "weight": 100}],
             "timeoutMs": 2000,
             "retries": {"attempts": 2, "retryOn": ["5xx", "reset", "connect-failure"]}}]})
    };
    let cluster = |name: &str, protocol: &str, endpoint: &str, port: u16| {
        json!({"name": name, "service": "b/api", "spiffeId": API_ID, "protocol": protocol,
               "loadBalancer": "ROUND_ROBIN", "endpoints": {"static": [endpoint], "port": port}})
    };
    json!({
        "schemaVersion": "weft.dev/proxyconfig/v1",
        "revision": REVISION,
        "trustDomain": TRUST_DOMAIN,
        "mtls": "STRICT",
        "workload": workload("a", "web", common::mesh::WEB_ID),
        "inbound": [],
        "outbound": {
            "http": [host(8080, "b/api:8080"), host(9090, "b/api:9090")],
            "tcp": [],
            "egress": [],
            "clusters": [
                cluster("b/api:8080", "http", http_endpoint, 8080),
                cluster("b/api:9090", "grpc", grpc_endpoint, 9090),
            ],
        },
        "telemetry": {"samplingPercent": 100.0},
    })
    .to_string()
}

/// Forwards TCP to `target`, counting the connections: how many the web sidecar opened.
async fn counting_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("address");
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

struct Mesh {
    grpc_app: GrpcApp,
    http_app: App,
    /// Connections `a/web` opened to `b/api`'s grpc port.
    grpc_connections: Arc<AtomicUsize>,
    outbound: SocketAddr,
    web: Proxy,
    _api: Proxy,
}

impl Mesh {
    async fn start() -> Mesh {
        let pki = Pki::new();
        let grpc_app = GrpcApp::default();
        let grpc_addr = grpc_app.start().await;
        let http_app = App::start("api").await;
        let listeners: Listeners = serde_json::from_value(json!({
            "inbound": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
            "app": {"grpc": grpc_addr.to_string(), "http": http_app.addr.to_string()},
        }))
        .expect("listeners");
        let rt = tokio::runtime::Handle::current();
        let api = Proxy::spawn_on(&rt, &api_config(), pki.api.material(), listeners)
            .expect("b/api starts");
        let (relay, grpc_connections) = counting_relay(api.bound["inbound:grpc"]).await;
        let config = web_config(&relay.to_string(), &api.bound["inbound:http"].to_string());
        let listeners = Listeners {
            outbound_http: Some("127.0.0.1:0".parse().expect("address")),
            ..Listeners::default()
        };
        let web = Proxy::spawn_on(&rt, &config, pki.web.material(), listeners).expect("a/web");
        let outbound = web.bound["outbound:http"];
        Mesh {
            grpc_app,
            http_app,
            grpc_connections,
            outbound,
            web,
            _api: api,
        }
    }
}

/// What an h2c client got: status, headers, body, trailers.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// An app speaking h2c with prior knowledge to its sidecar, as gRPC clients do.
async fn h2c_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

async fn grpc_call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
) -> Answer {
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .expect("request");
    sender.ready().await.expect("ready");
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

#[tokio::test]
async fn a_grpc_call_crosses_as_http2_end_to_end_with_its_trailers() {
    let mesh = Mesh::start().await;
    let mut client = h2c_client(mesh.outbound).await;

    let answer = grpc_call(&mut client, GRPC_HOST, "/pkg.Service/Method").await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, Bytes::from_static(b"onetwothree"));
    let trailers = answer.trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    let seen = &mesh.grpc_app.seen()[0];
    assert_eq!(seen.version, Version::HTTP_2, "the app is spoken to in h2c");
    assert_eq!(seen.authority.as_deref(), Some(GRPC_HOST));
    assert_eq!(seen.path, "/pkg.Service/Method");
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["x-weft-peer"], common::mesh::WEB_ID);
    assert!(seen.headers.get("host").is_none());
    let traceparent = seen.headers["traceparent"].to_str().expect("ascii");
    assert!(traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
}

#[tokio::test]
async fn a_denied_grpc_call_gets_permission_denied_naming_the_policy() {
    let mesh = Mesh::start().await;
    let mut client = h2c_client(mesh.outbound).await;

    let answer = grpc_call(&mut client, GRPC_HOST, "/pkg.Admin/Drop").await;

    assert_eq!(
        answer.status, 200,
        "gRPC clients want their status in grpc-status"
    );
    assert_eq!(answer.headers["grpc-status"], "7");
    let message = answer.headers["grpc-message"].to_str().expect("ascii");
    assert!(message.contains("denied by b/no-admin"), "{message}");
    assert!(message.contains(REVISION), "{message}");
    assert!(answer.body.is_empty());
    assert!(mesh.grpc_app.seen().is_empty());
    let metrics = mesh.web.telemetry().snapshot_json();
    assert!(
        metrics.contains(r#""protocol":"grpc","grpc_status":7"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_calls_share_one_http2_connection_between_sidecars() {
    let mesh = Mesh::start().await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut client = h2c_client(mesh.outbound).await;
        calls.push(tokio::spawn(async move {
            grpc_call(&mut client, GRPC_HOST, "/pkg.Service/Method").await
        }));
    }
    for call in calls {
        let answer = call.await.expect("call");
        assert_eq!(answer.trailers.expect("trailers")["grpc-status"], "0");
    }
    // The burst arrives before any connection is up: the first call opens it, the others wait
    // for it and share it.
    let opened = mesh.grpc_connections.load(Ordering::SeqCst);
    assert_eq!(opened, 1, "{opened} connections for 20 calls");
    let to_app = mesh.grpc_app.connections.load(Ordering::SeqCst);
    assert_eq!(to_app, 1, "{to_app} connections to the app for 20 calls");
    let metrics = mesh.web.telemetry().snapshot_json();
    assert!(
        metrics.contains(r#""protocol":"grpc","grpc_status":0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_http_port_stays_http1_whatever_the_caller_speaks() {
    let mesh = Mesh::start().await;
    let mut client = h2c_client(mesh.outbound).await;
    let req = Request::builder()
        .uri("http://api.b:8080/items")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let seen = &mesh.http_app.seen()[0];
    assert_eq!(seen.headers["host"], "api.b:8080");
    assert_eq!(seen.path, "/items");
}

#[tokio::test]
async fn an_http1_client_reaches_a_grpc_port_over_http2() {
    let mesh = Mesh::start().await;
    let mut client = Client::connect(mesh.outbound).await;
    let reply = client.get_from(GRPC_HOST, "/pkg.Service/Method").await;
    assert_eq!(reply, (200, "onetwothree".into()));
    assert_eq!(mesh.grpc_app.seen()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn a_streamed_grpc_request_is_never_retried_and_a_replayable_one_is() {
    let mesh = Mesh::start().await;
    let unavailable = "/pkg.Service/Unavailable";
    let hits = |mesh: &Mesh| {
        mesh.grpc_app
            .seen()
            .iter()
            .filter(|s| s.path == unavailable)
            .count()
    };

    // As gRPC sends it: no Content-Length, the body streamed. Once sent it cannot be sent
    // again, so the 503 comes back after one try, retry policy or not.
    let mut client = h2c_client(mesh.outbound).await;
    let message = Frames([Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))].into());
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{GRPC_HOST}{unavailable}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(message)
        .expect("request");
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 503);
    assert_eq!(hits(&mesh), 1);

    // A GET has no body to lose: tried three times, over the same HTTP/2 connection.
    let mut client = Client::connect(mesh.outbound).await;
    let reply = client.get_from(GRPC_HOST, unavailable).await;
    assert_eq!(reply.0, 503);
    assert_eq!(hits(&mesh), 4);
    assert_eq!(mesh.grpc_connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_call_past_its_routes_timeout_is_deadline_exceeded() {
    let mesh = Mesh::start().await;
    let mut client = h2c_client(mesh.outbound).await;

    let answer = grpc_call(&mut client, GRPC_HOST, "/pkg.Service/Slow").await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["grpc-status"], "4");
    let message = answer.headers["grpc-message"].to_str().expect("ascii");
    assert!(message.contains("timed out"), "{message}");
}

/// A TLS server holding `b/api`'s certificate that offers `alpn` and answers nothing; returns
/// its address.
async fn tls_server(pki: &Pki, alpn: &[&[u8]]) -> String {
    let mut config = (*pki.api.material().server).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    drop(stream);
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn alpn_settles_on_http2_only_when_the_cluster_wants_it_and_the_peer_offers_it() {
    use fastpath::protocol::HttpVersion::{Http1, Http2};
    let pki = Pki::new();
    let tls = arc_swap::ArcSwap::from_pointee(pki.web.material());
    let mesh = fastpath::upstream::Transport::Mesh {
        expected_id: API_ID.into(),
    };
    let current = tls_server(&pki, &[b"h2", b"weft/http1"]).await;
    let older = tls_server(&pki, &[b"weft/http1"]).await;
    for (server, wanted, settled) in [
        (&current, Http2, Http2),
        (&current, Http1, Http1), // an http port stays HTTP/1.1
        (&older, Http2, Http1),   // a peer without h2 (an earlier release) is still served
        (&older, Http1, Http1),
    ] {
        let (_, version) = fastpath::upstream::connect(server, &mesh, &tls, wanted)
            .await
            .expect("handshake");
        assert_eq!(version, settled, "{wanted:?} against {server}");
    }
}
