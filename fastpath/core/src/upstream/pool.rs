//! The connection pool of each endpoint: HTTP/1.1 connections (fastpath's own client, `h1`),
//! one request at a time each, or one shared HTTP/2 connection (hyper's) that multiplexes every
//! request to the endpoint; and sending one request over a pooled (or new) connection.

use crate::breaker::{Limit, Permit};
use arc_swap::ArcSwap;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::Ordering;

use super::connect::{connect, Transport, UpstreamError};
use super::endpoint::Endpoint;
use super::h1::H1;
use super::Upstream;
use crate::body::{incoming, Body};
use crate::protocol::{shape_request, HttpVersion};
use crate::tls::Material;
use crate::upgrade;

impl Endpoint {
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
        // The most recently used first: the warmest, and the least likely to have been closed
        // by the peer's idle timeout. One found closed is dropped here.
        loop {
            let mut conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if conn.reusable() {
                return Some(Sender::Http1(conn));
            }
        }
    }

    /// Shares a new HTTP/2 connection, unless a concurrent request already opened one: then
    /// this one carries only its own request and closes when that is done.
    fn share(&self, sender: &http2::SendRequest<Body>) {
        let mut shared = self.multiplexed.lock().unwrap_or_else(|p| p.into_inner());
        if shared.as_ref().is_none_or(|s| s.is_closed()) {
            *shared = Some(sender.clone());
        }
    }
}

impl Upstream {
    /// Closes the idle HTTP/1.1 connections whose peer has closed or broken them.
    pub fn sweep_idle(&self) {
        for endpoint in self.endpoints.load().iter() {
            super::h1::sweep(&endpoint.idle);
        }
    }

    /// Sends one request to one endpoint over a pooled (or new) connection.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        tls: &ArcSwap<Material>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        // An app is asked to switch protocols in HTTP/1.1 whatever its port speaks: WebSocket
        // servers take the HTTP/1.1 Upgrade, and an upgraded connection is never pooled anyway.
        if self.version == HttpVersion::Http2
            && matches!(self.transport, Transport::Plain)
            && upgrade::requested(&req)
        {
            return self.upgrade_http1(endpoint, tls, req).await;
        }
        self.connection(endpoint, tls).await?.send(req).await
    }

    /// An Upgrade request over an HTTP/1.1 connection of its own, which it then keeps.
    async fn upgrade_http1(
        &self,
        endpoint: &Endpoint,
        tls: &ArcSwap<Material>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        let http_error = |source| UpstreamError::Http {
            addr: endpoint.addr.clone(),
            source,
        };
        let (stream, _) = connect(&endpoint.addr, &self.transport, tls, HttpVersion::Http1)
            .await
            .inspect_err(|_| endpoint.connect_failed())?;
        endpoint.connected();
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let (mut parts, body) = req.into_parts();
        shape_request(&mut parts, HttpVersion::Http1, self.scheme());
        sender
            .send_request(http::Request::from_parts(parts, body))
            .await
            .map(|resp| resp.map(incoming))
            .map_err(http_error)
    }

    /// A pooled connection that can take a request now. A shared HTTP/2 connection may be at
    /// its peer's stream limit or going away: wait for a stream here, while the caller still
    /// holds its body, and let the caller open another connection if this one is gone.
    async fn reusable(endpoint: &Endpoint) -> Option<Sender> {
        match endpoint.checkout() {
            Some(Sender::Http2(mut sender)) => sender
                .ready()
                .await
                .is_ok()
                .then_some(Sender::Http2(sender)),
            other => other,
        }
    }

    /// A pooled connection to `endpoint`, or a new one. Nothing has been sent when this
    /// fails, so the caller still holds its request (and a body it can send only once).
    pub async fn connection<'a>(
        &self,
        endpoint: &'a Endpoint,
        tls: &ArcSwap<Material>,
    ) -> Result<Connection<'a>, UpstreamError> {
        let scheme = self.scheme();
        if let Some(sender) = Self::reusable(endpoint).await {
            return Ok(Connection {
                endpoint,
                sender,
                scheme,
            });
        }
        // One HTTP/2 connection is opened at a time per endpoint: whoever waited here while
        // another request opened it finds it shared once the lock is theirs.
        let _opening =
            if self.version == HttpVersion::Http2 && !endpoint.http1_peer.load(Ordering::Relaxed) {
                let failures = endpoint.failures();
                let guard = endpoint.opening.lock().await;
                if let Some(sender) = Self::reusable(endpoint).await {
                    return Ok(Connection {
                        endpoint,
                        sender,
                        scheme,
                    });
                }
                // The connect this request waited for failed: fail as it did (a connect failure,
                // so retried elsewhere) rather than queue one more handshake behind it.
                if endpoint.failures() > failures {
                    return Err(UpstreamError::Connect {
                        addr: endpoint.addr.clone(),
                        source: std::io::Error::other("a concurrent connect to it just failed"),
                    });
                }
                Some(guard)
            } else {
                None
            };
        // A new connection: it waits as a pending request while it is set up, and holds a
        // connection slot for as long as it stays open.
        let slot = self.breaker.admit(Limit::Connections);
        let pending = self.breaker.admit(Limit::PendingRequests);
        let (slot, _pending) = match (slot, pending) {
            (Ok(slot), Ok(pending)) => (slot, pending),
            (Err(limit), _) | (_, Err(limit)) => return Err(UpstreamError::Overflow(limit)),
        };
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
                if self.version == HttpVersion::Http2 {
                    endpoint.http1_peer.store(true, Ordering::Relaxed);
                }
                Sender::Http1(H1::new(stream, slot))
            }
            HttpVersion::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(http_error)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop::<Permit>(slot);
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
    /// One request at a time; back to the endpoint's idle list when its response body ends.
    Http1(H1),
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
    ) -> Result<http::Response<Body>, UpstreamError> {
        let Connection {
            endpoint,
            sender,
            scheme,
        } = self;
        let http_error = |source| UpstreamError::Http {
            addr: endpoint.addr.clone(),
            source,
        };
        let (mut parts, body) = req.into_parts();
        let result = match sender {
            Sender::Http1(conn) => {
                shape_request(&mut parts, HttpVersion::Http1, scheme);
                let req = http::Request::from_parts(parts, body);
                // A switch of protocols (WebSocket) or a tunnel is hyper's to carry: the
                // connection becomes the tunnel, never to come back to the pool.
                if upgrade::requested(&req) || req.method() == http::Method::CONNECT {
                    return conn
                        .into_hyper(req)
                        .await
                        .map(|resp| resp.map(incoming))
                        .map_err(http_error);
                }
                // Dropped mid-request (a timeout), the exchange closes the connection: its
                // answer is unwanted.
                return conn
                    .send(req, endpoint.idle.clone())
                    .await
                    .map_err(|source| UpstreamError::H1 {
                        addr: endpoint.addr.clone(),
                        source,
                    });
            }
            Sender::Http2(mut sender) => {
                // A WebSocket handshake becomes an extended CONNECT stream (RFC 8441).
                let tunnel = upgrade::to_extended_connect(&mut parts);
                shape_request(&mut parts, HttpVersion::Http2, scheme);
                // Dropped mid-request, only this stream is reset; the connection carries on.
                match sender.ready().await {
                    Ok(()) => sender
                        .send_request(http::Request::from_parts(parts, body))
                        .await
                        .map(|mut resp| {
                            if let Some(protocol) = tunnel {
                                upgrade::tunnel_opened(protocol, &mut resp);
                            }
                            resp.map(incoming)
                        }),
                    Err(e) => Err(e),
                }
            }
        };
        result.map_err(http_error)
    }
}
