//! Upstreams: a cluster's endpoints, the load balancer that picks one, passive health, and a
//! pool of HTTP/1.1 connections per endpoint (mTLS to mesh peers, plain to the local app).
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
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Cluster, LoadBalancer};
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
    idle: Mutex<Vec<SendRequest<Body>>>,
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

    /// A pooled connection that can take a request now, if any.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|s| !s.is_closed());
        let i = idle.iter().position(|s| s.is_ready())?;
        Some(idle.swap_remove(i))
    }

    fn checkin(&self, sender: SendRequest<Body>) {
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

pub async fn connect_stream(
    addr: &str,
    transport: &Transport,
    tls: &ArcSwap<Material>,
) -> Result<Box<dyn Stream>, UpstreamError> {
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
        Transport::Plain => Ok(Box::new(tcp)),
        Transport::Egress { sni, tls } => {
            let name = rustls::pki_types::ServerName::try_from(sni.clone()).map_err(|e| {
                UpstreamError::Tls {
                    addr: addr.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
            let stream =
                handshake(addr, TlsConnector::from(tls.clone()).connect(name, tcp)).await?;
            Ok(Box::new(stream))
        }
        Transport::Mesh { expected_id } => {
            let config = tls
                .load()
                .client_for(expected_id)
                .map_err(|e| UpstreamError::Tls {
                    addr: addr.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            let stream = handshake(
                addr,
                TlsConnector::from(config).connect(Material::server_name(), tcp),
            )
            .await?;
            Ok(Box::new(stream))
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
        );
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
        if let Some(sender) = endpoint.checkout() {
            return Ok(Connection { endpoint, sender });
        }
        let stream = match connect_stream(&endpoint.addr, &self.transport, tls).await {
            Ok(s) => s,
            Err(e) => {
                endpoint.connect_failed();
                return Err(e);
            }
        };
        endpoint.connected();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Http {
                addr: endpoint.addr.clone(),
                source,
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection { endpoint, sender })
    }
}

/// A connection to one endpoint, ready to carry one request.
pub struct Connection<'a> {
    endpoint: &'a Endpoint,
    sender: SendRequest<Body>,
}

impl Connection<'_> {
    pub async fn send(
        self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let Connection {
            endpoint,
            mut sender,
        } = self;
        // Dropped mid-request (a timeout), `sender` closes the connection: its answer is unwanted.
        let result = sender.send_request(req).await;
        // Back in the pool at once: it reports ready again when this response's body is done.
        endpoint.checkin(sender);
        result.map_err(|source| UpstreamError::Http {
            addr: endpoint.addr.clone(),
            source,
        })
    }
}
