//! Upstreams: a cluster's endpoints, the load balancer that picks one, passive health, and a
//! pool of connections per endpoint (mTLS to mesh peers, plain to the local app): HTTP/1.1
//! connections, one request at a time each, or one shared HTTP/2 connection that multiplexes
//! every request to the endpoint.
//!
//! An endpoint that fails to connect is skipped for a back-off period; if every endpoint is
//! down, all are tried again rather than failing fast forever.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Cluster, LoadBalancer};
use crate::protocol::{shape_request, HttpVersion};
use crate::tls::Material;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// How long an endpoint that failed to connect is skipped; doubles per consecutive failure.
pub const EJECT_BASE: Duration = Duration::from_millis(500);
pub const EJECT_MAX: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound on a TLS handshake with an upstream (a peer sidecar or an external host). A peer
/// that accepts TCP but never answers the ClientHello would otherwise hold a request, and
/// a pooled connection slot, for as long as the route's timeout (or forever without one).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = CONNECT_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no endpoints")]
    NoEndpoints,
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {addr}: {source}")]
    Http { addr: String, source: hyper::Error },
}

impl UpstreamError {
    /// A failure before the request could have reached the upstream app: always safe to retry.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::Tls { .. } | UpstreamError::NoEndpoints
        )
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: String,
    pub in_flight: AtomicUsize,
    failures: AtomicU32,
    down_until: AtomicU64, // ms since `epoch`
    idle: Mutex<Vec<http1::SendRequest<Body>>>,
    /// The HTTP/2 connection every request to this endpoint shares, once one is up.
    multiplexed: Mutex<Option<http2::SendRequest<Body>>>,
}

// Ejection is timed on tokio's clock, like every other timeout, so a paused-time test can
// step past it.
fn epoch() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(tokio::time::Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Endpoint {
    pub fn new(addr: String) -> Endpoint {
        Endpoint {
            addr,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            multiplexed: Mutex::new(None),
        }
    }

    /// Counts one request in flight here until the guard is dropped, however the request
    /// ends: answered, timed out, or abandoned by a client that hung up.
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn healthy(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now_ms()
    }

    pub fn connect_failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
        let back_off = (EJECT_BASE * 2u32.pow(n)).min(EJECT_MAX);
        self.down_until
            .store(now_ms() + back_off.as_millis() as u64, Ordering::Relaxed);
    }

    fn connected(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.down_until.store(0, Ordering::Relaxed);
    }

    /// A pooled connection that can take a request now, if any: the shared HTTP/2 connection
    /// while it is open, else an idle HTTP/1.1 one (a peer that did not negotiate HTTP/2).
    fn checkout(&self) -> Option<Sender> {
        {
            let mut shared = self.multiplexed.lock().unwrap_or_else(|p| p.into_inner());
            match shared.as_ref() {
                Some(s) if !s.is_closed() => return Some(Sender::Http2(s.clone())),
                Some(_) => *shared = None, // gone away: the next request opens another
                None => {}
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|s| !s.is_closed());
        let i = idle.iter().position(|s| s.is_ready())?;
        Some(Sender::Http1(idle.swap_remove(i)))
    }

    /// Shares a new HTTP/2 connection, unless a concurrent request already opened one: then
    /// this one carries only its own request and closes when that is done.
    fn share(&self, sender: &http2::SendRequest<Body>) {
        let mut shared = self.multiplexed.lock().unwrap_or_else(|p| p.into_inner());
        if shared.as_ref().is_none_or(|s| s.is_closed()) {
            *shared = Some(sender.clone());
        }
    }

    fn checkin(&self, sender: http1::SendRequest<Body>) {
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sender);
        }
    }
}

/// One request in flight on an endpoint, as least-request counts them.
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How to reach a cluster's endpoints: mTLS pinned to an identity, or plain TCP (the local app).
#[derive(Debug, Clone)]
pub enum Transport {
    Mesh {
        expected_id: String,
    },
    Plain,
    /// TLS to a destination outside the mesh, verified against the system's roots.
    Egress {
        sni: String,
        tls: Arc<rustls::ClientConfig>,
    },
}

/// A connection for opaque bytes (TCP upstreams, the app's TCP port).
pub async fn connect_stream(
    addr: &str,
    transport: &Transport,
    tls: &ArcSwap<Material>,
) -> Result<Box<dyn Stream>, UpstreamError> {
    Ok(connect(addr, transport, tls, HttpVersion::Http1).await?.0)
}

/// A connection to speak HTTP on, and the version to speak: what `wanted` asked for, unless a
/// mesh peer settled on HTTP/1.1 by ALPN. Egress is HTTP/1.1 (its ExternalService says `http`).
pub async fn connect(
    addr: &str,
    transport: &Transport,
    tls: &ArcSwap<Material>,
    wanted: HttpVersion,
) -> Result<(Box<dyn Stream>, HttpVersion), UpstreamError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })
        .map_err(|source| UpstreamError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    match transport {
        Transport::Plain => Ok((Box::new(tcp), wanted)),
        Transport::Egress { sni, tls } => {
            let name = rustls::pki_types::ServerName::try_from(sni.clone()).map_err(|e| {
                UpstreamError::Tls {
                    addr: addr.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
            let stream =
                handshake(addr, TlsConnector::from(tls.clone()).connect(name, tcp)).await?;
            Ok((Box::new(stream), HttpVersion::Http1))
        }
        Transport::Mesh { expected_id } => {
            let config =
                tls.load()
                    .client_for(expected_id, wanted)
                    .map_err(|e| UpstreamError::Tls {
                        addr: addr.to_owned(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
            let stream = handshake(
                addr,
                TlsConnector::from(config).connect(Material::server_name(), tcp),
            )
            .await?;
            let version = HttpVersion::negotiated(stream.get_ref().1.alpn_protocol());
            Ok((Box::new(stream), version))
        }
    }
}

/// A client TLS handshake bounded by [`TLS_HANDSHAKE_TIMEOUT`]; a timeout is a TLS failure,
/// so it counts as a connect failure (retried, and the endpoint ejected) like a refused one.
async fn handshake<S>(
    addr: &str,
    connect: tokio_rustls::Connect<S>,
) -> Result<tokio_rustls::client::TlsStream<S>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })
        .map_err(|source| UpstreamError::Tls {
            addr: addr.to_owned(),
            source,
        })
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub load_balancer: LoadBalancer,
    pub transport: Transport,
    /// The HTTP version its port's protocol asks for.
    pub version: HttpVersion,
    pub endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    pub dns: Option<(String, u16)>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn for_cluster(c: &Cluster) -> Upstream {
        let endpoints = c.endpoints.r#static.clone().unwrap_or_default();
        let dns = c.endpoints.dns.clone().map(|d| (d, c.endpoints.port));
        let mut up = Upstream::new(
            c.name.clone(),
            c.load_balancer,
            Transport::Mesh {
                expected_id: c.spiffe_id.clone(),
            },
            endpoints,
        )
        .speaking(HttpVersion::for_protocol(c.protocol));
        up.dns = dns.filter(|_| c.endpoints.r#static.is_none());
        up
    }

    pub fn new(
        name: String,
        lb: LoadBalancer,
        transport: Transport,
        addrs: Vec<String>,
    ) -> Upstream {
        Upstream {
            name,
            load_balancer: lb,
            transport,
            version: HttpVersion::Http1,
            endpoints: ArcSwap::from_pointee(
                addrs
                    .into_iter()
                    .map(|a| Arc::new(Endpoint::new(a)))
                    .collect(),
            ),
            dns: None,
            next: AtomicUsize::new(0),
        }
    }

    /// The same upstream, speaking `version` (HTTP/1.1 unless told).
    pub fn speaking(mut self, version: HttpVersion) -> Upstream {
        self.version = version;
        self
    }

    /// Replaces the endpoint list, keeping the state (pools, health) of endpoints that remain.
    pub fn set_endpoints(&self, addrs: Vec<String>) {
        let old = self.endpoints.load();
        let new: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|a| {
                old.iter()
                    .find(|e| e.addr == a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(a)))
            })
            .collect();
        self.endpoints.store(Arc::new(new));
    }

    /// Round robin, or least-request by the power of two choices, over healthy endpoints.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let all = self.endpoints.load();
        let healthy: Vec<&Arc<Endpoint>> = all.iter().filter(|e| e.healthy()).collect();
        let pool: Vec<&Arc<Endpoint>> = if healthy.is_empty() {
            all.iter().collect()
        } else {
            healthy
        };
        match pool.len() {
            0 => None,
            1 => Some(pool[0].clone()),
            n => Some(match self.load_balancer {
                LoadBalancer::RoundRobin => {
                    pool[self.next.fetch_add(1, Ordering::Relaxed) % n].clone()
                }
                LoadBalancer::LeastRequest => {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    let b = (a + rng.random_range(1..n)) % n;
                    let (ea, eb) = (pool[a], pool[b]);
                    if eb.in_flight.load(Ordering::Relaxed) < ea.in_flight.load(Ordering::Relaxed) {
                        eb.clone()
                    } else {
                        ea.clone()
                    }
                }
            }),
        }
    }

    /// Sends one request to one endpoint over a pooled (or new) connection.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        tls: &ArcSwap<Material>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        self.connection(endpoint, tls).await?.send(req).await
    }

    /// A pooled connection to `endpoint`, or a new one. Nothing has been sent when this
    /// fails, so the caller still holds its request (and a body it can send only once).
    pub async fn connection<'a>(
        &self,
        endpoint: &'a Endpoint,
        tls: &ArcSwap<Material>,
    ) -> Result<Connection<'a>, UpstreamError> {
        let scheme = self.scheme();
        // A shared HTTP/2 connection may be at its peer's stream limit or going away: wait for
        // a stream here, while the caller still holds its body, and open another connection if
        // this one is gone.
        let reusable = match endpoint.checkout() {
            Some(Sender::Http2(mut sender)) => sender
                .ready()
                .await
                .is_ok()
                .then_some(Sender::Http2(sender)),
            other => other,
        };
        if let Some(sender) = reusable {
            return Ok(Connection {
                endpoint,
                sender,
                scheme,
            });
        }
        let (stream, version) =
            match connect(&endpoint.addr, &self.transport, tls, self.version).await {
                Ok(s) => s,
                Err(e) => {
                    endpoint.connect_failed();
                    return Err(e);
                }
            };
        endpoint.connected();
        let http_error = |source| UpstreamError::Http {
            addr: endpoint.addr.clone(),
            source,
        };
        let sender = match version {
            HttpVersion::Http1 => {
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_error)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::Http1(sender)
            }
            HttpVersion::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(http_error)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                endpoint.share(&sender);
                Sender::Http2(sender)
            }
        };
        Ok(Connection {
            endpoint,
            sender,
            scheme,
        })
    }

    /// The `:scheme` of HTTP/2 requests: `https` over TLS, `http` over plain TCP (h2c).
    fn scheme(&self) -> http::uri::Scheme {
        match self.transport {
            Transport::Plain => http::uri::Scheme::HTTP,
            Transport::Mesh { .. } | Transport::Egress { .. } => http::uri::Scheme::HTTPS,
        }
    }
}

/// A pooled connection's request half.
enum Sender {
    /// One request at a time; back to the endpoint's idle list after each.
    Http1(http1::SendRequest<Body>),
    /// A handle on the endpoint's shared connection; requests multiplex as streams.
    Http2(http2::SendRequest<Body>),
}

/// A connection to one endpoint, ready to carry one request.
pub struct Connection<'a> {
    endpoint: &'a Endpoint,
    sender: Sender,
    scheme: http::uri::Scheme,
}

impl Connection<'_> {
    /// Sends `req` in the form this connection's version wants (see [`shape_request`]).
    pub async fn send(
        self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let Connection {
            endpoint,
            sender,
            scheme,
        } = self;
        let (mut parts, body) = req.into_parts();
        let result = match sender {
            Sender::Http1(mut sender) => {
                shape_request(&mut parts, HttpVersion::Http1, scheme);
                // Dropped mid-request (a timeout), `sender` closes the connection: its answer
                // is unwanted.
                let result = sender
                    .send_request(http::Request::from_parts(parts, body))
                    .await;
                // Back in the pool at once: it reports ready again when this response's body
                // is done.
                endpoint.checkin(sender);
                result
            }
            Sender::Http2(mut sender) => {
                shape_request(&mut parts, HttpVersion::Http2, scheme);
                // Dropped mid-request, only this stream is reset; the connection carries on.
                match sender.ready().await {
                    Ok(()) => {
                        sender
                            .send_request(http::Request::from_parts(parts, body))
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        result.map_err(|source| UpstreamError::Http {
            addr: endpoint.addr.clone(),
            source,
        })
    }
}
