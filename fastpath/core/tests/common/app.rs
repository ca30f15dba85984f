//! A tiny HTTP/1.1 app on loopback, spawned on the test's runtime so it shares the test's
//! (possibly paused) clock. It answers `<name> received=<bytes>` after reading the whole body.
//!
//! Paths steer it: `/status/N` answers N; `/hold` never answers (within the test), so a request
//! stays in flight. Every app answers after its own `delay`, and counts what it saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the app saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body_bytes: usize,
}

#[derive(Clone)]
pub struct App {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl App {
    /// An app that answers at once.
    pub async fn start(name: &str) -> App {
        App::start_with_delay(name, Duration::ZERO).await
    }

    /// An app that answers every request only after `delay` (on the tokio clock).
    pub async fn start_with_delay(name: &str, delay: Duration) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let app = App {
            name: name.to_owned(),
            addr: listener.local_addr().expect("app address"),
            seen: Arc::default(),
        };
        let serving = app.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let app = serving.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, hyper::Error>(app.answer(req, delay).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        app
    }

    async fn answer(
        &self,
        req: http::Request<hyper::body::Incoming>,
        delay: Duration,
    ) -> http::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body_bytes = match body.collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => usize::MAX, // the body broke off: no test expects that
        };
        let path = parts.uri.path().to_owned();
        self.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers: parts.headers,
            body_bytes,
        });
        if path == "/hold" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        tokio::time::sleep(delay).await;
        let status = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let mut resp = http::Response::new(Full::new(Bytes::from(format!(
            "{} received={body_bytes}",
            self.name
        ))));
        *resp.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
        resp
    }

    /// How many requests reached this app (answered or not).
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
