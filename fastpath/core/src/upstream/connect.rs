//! Connecting to an endpoint: TCP with a bounded connect, then mTLS pinned to the peer's
//! SPIFFE ID (mesh), TLS against the system roots (egress), or nothing (the local app); and
//! the version to speak on it, as ALPN settled.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::protocol::HttpVersion;
use crate::tls::Material;
use crate::tunables::{CONNECT_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};

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
    /// An HTTP/1.1 exchange on fastpath's own client connection (`h1.rs`) failed.
    #[error("upstream {addr}: {source}")]
    H1 {
        addr: String,
        source: super::h1::H1Error,
    },
    /// The cluster's circuit breaker refused a new connection or a pending request.
    #[error("circuit breaker: {0:?} at limit")]
    Overflow(crate::breaker::Limit),
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

/// A connection's byte stream. `Sync` because a response body read straight from it
/// (`h1.rs`) travels in the boxed body type, which is.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}
