//! Upstreams: a cluster's endpoints and the load balancer that picks one. How an endpoint
//! is reached lives in `connect`, its health and in-flight count in `endpoint`, its pooled
//! connections in `pool`.
//!
//! An endpoint that fails to connect is skipped for a back-off period; if every endpoint is
//! down, all are tried again rather than failing fast forever.

mod connect;
mod endpoint;
mod pool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rand::Rng;

use crate::config::{Cluster, LoadBalancer};
use crate::protocol::HttpVersion;

pub use connect::{connect, connect_stream, Stream, Transport, UpstreamError};
pub use endpoint::{Endpoint, InFlight};
pub use pool::Connection;

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
}
