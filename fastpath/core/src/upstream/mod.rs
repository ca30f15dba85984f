//! Upstreams: a cluster's endpoints and the load balancer that picks one. How an endpoint
//! is reached lives in `connect`, its health and in-flight count in `endpoint`, its pooled
//! connections in `pool`.
//!
//! An endpoint that fails to connect is skipped for a back-off period; if every endpoint is
//! down, all are tried again rather than failing fast forever. A cluster may also carry a
//! circuit breaker (`breaker`), outlier detection (`outlier`) that leaves ejected endpoints
//! out, and requests may carry a hash key that picks by Maglev (`hash`).

mod connect;
mod endpoint;
mod h1;
mod pool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rand::Rng;

use crate::breaker::Breaker;
use crate::config::{CircuitBreaker, Cluster, LoadBalancer, OutlierDetection};
use crate::ewma;
use crate::hash::Maglev;
use crate::outlier::Detector;
use crate::protocol::HttpVersion;
use crate::tunables::DNS_ON_DEMAND_RETRY;

pub use connect::{connect, connect_stream, Stream, Transport, UpstreamError};
pub use endpoint::{Endpoint, InFlight};
pub use h1::H1Error;
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
    /// When a request last looked `dns` up because there were no endpoints: one lookup at a
    /// time, and not again within `DNS_ON_DEMAND_RETRY` (`resolve_if_empty`).
    on_demand: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    next: AtomicUsize,
    /// Limits on what this sidecar has outstanding here; unconfigured, it only counts.
    pub breaker: Arc<Breaker>,
    pub outlier: Option<Detector>,
    /// The settings the two above were made from, so a reload keeps them only if unchanged.
    pub resilience: (Option<CircuitBreaker>, Option<OutlierDetection>),
    /// The Maglev table of the endpoints last picked from with a hash key, and their
    /// addresses: rebuilt only when that set changes.
    maglev: Mutex<Option<(Vec<String>, Arc<Maglev>)>>,
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
        up.breaker = Arc::new(Breaker::new(c.circuit_breaker.as_ref()));
        up.outlier = c
            .outlier_detection
            .as_ref()
            .map(|o| Detector::new(o, tokio::time::Instant::now()));
        up.resilience = (c.circuit_breaker.clone(), c.outlier_detection.clone());
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
            on_demand: tokio::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
            breaker: Arc::new(Breaker::new(None)),
            outlier: None,
            resilience: (None, None),
            maglev: Mutex::new(None),
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
        if let Some(d) = &self.outlier {
            d.retain(|a| new.iter().any(|e| e.addr == a));
        }
        self.endpoints.store(Arc::new(new));
    }

    /// Resolves a cluster named by DNS again and takes what it finds (nothing, if the lookup
    /// fails: the endpoints in force stay). A cluster of addresses is left as it is.
    pub async fn resolve(&self) {
        let Some((name, port)) = &self.dns else {
            return;
        };
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), *port)).await {
            let mut found: Vec<String> = addrs.map(|a| a.to_string()).collect();
            found.sort();
            found.dedup();
            self.set_endpoints(found);
        }
    }

    /// A cluster named by DNS that has no endpoints yet (just started, or new in a reload) is
    /// resolved now rather than failing the request: the refresh loop resolves it in the
    /// background, and a request sent right after start would otherwise race it and get a
    /// connect failure. Requests that arrive meanwhile wait for that one lookup; after one
    /// that found nothing, they fail at once for `DNS_ON_DEMAND_RETRY`. Resolved clusters
    /// cost one atomic load here.
    pub async fn resolve_if_empty(&self) {
        if self.dns.is_none() || !self.endpoints.load().is_empty() {
            return;
        }
        let mut last = self.on_demand.lock().await;
        let now = tokio::time::Instant::now();
        let recent = last.is_some_and(|t| now.duration_since(t) < DNS_ON_DEMAND_RETRY);
        if self.endpoints.load().is_empty() && !recent {
            *last = Some(now);
            self.resolve().await;
        }
    }

    /// Round robin, or the power of two choices by fewest requests in flight (least-request) or
    /// by latency × load (peak-EWMA), over healthy endpoints not ejected.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        self.pick_keyed(None)
    }

    /// With a hash key, the endpoint Maglev assigns it among those usable now (so a key moves
    /// only when its endpoint goes, or comes back); without one, as [`Upstream::pick`].
    pub fn pick_keyed(&self, key: Option<u64>) -> Option<Arc<Endpoint>> {
        let all = self.endpoints.load();
        let healthy: Vec<&Arc<Endpoint>> = all.iter().filter(|e| e.healthy()).collect();
        let pool: Vec<&Arc<Endpoint>> = if healthy.is_empty() {
            all.iter().collect()
        } else {
            healthy
        };
        let pool = match &self.outlier {
            Some(d) => d
                .usable(&pool, |e| &e.addr, tokio::time::Instant::now())
                .into_iter()
                .copied()
                .collect(),
            None => pool,
        };
        if let (Some(key), true) = (key, pool.len() > 1) {
            return Some(pool[self.maglev_for(&pool).pick(key)].clone());
        }
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
                LoadBalancer::PeakEwma => {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    let b = (a + rng.random_range(1..n)) % n;
                    let cost = |i: usize| {
                        let e = pool[i];
                        (i, e.latency.cost(e.in_flight.load(Ordering::Relaxed)))
                    };
                    pool[ewma::cheaper(cost(a), cost(b))].clone()
                }
            }),
        }
    }

    fn maglev_for(&self, pool: &[&Arc<Endpoint>]) -> Arc<Maglev> {
        let mut cached = self.maglev.lock().unwrap_or_else(|p| p.into_inner());
        let same = cached.as_ref().is_some_and(|(addrs, _)| {
            addrs.len() == pool.len() && addrs.iter().zip(pool).all(|(a, e)| *a == e.addr)
        });
        if !same {
            let addrs: Vec<String> = pool.iter().map(|e| e.addr.clone()).collect();
            let table = Maglev::build(&addrs).map(Arc::new);
            *cached = table.map(|t| (addrs, t));
        }
        cached
            .as_ref()
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| Arc::new(Maglev::single()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(name: &str) -> Upstream {
        let mut up = Upstream::new(
            "ext".into(),
            LoadBalancer::RoundRobin,
            Transport::Mesh {
                expected_id: String::new(),
            },
            vec![],
        );
        up.dns = Some((name.into(), 8443));
        up
    }

    #[tokio::test]
    async fn a_dns_cluster_with_no_endpoints_yet_is_resolved_before_a_pick() {
        let up = by_name("localhost");
        assert!(up.pick().is_none(), "nothing until resolved");
        up.resolve_if_empty().await;
        let picked = up.pick().expect("resolved on demand");
        assert!(picked.addr.ends_with(":8443"), "{}", picked.addr);
    }

    #[tokio::test]
    async fn after_a_lookup_that_found_nothing_requests_do_not_look_again_for_a_while() {
        let up = by_name("localhost");
        let now = tokio::time::Instant::now();
        *up.on_demand.lock().await = Some(now); // as a lookup that just found nothing leaves it
        up.resolve_if_empty().await;
        assert!(
            up.pick().is_none(),
            "no second lookup within DNS_ON_DEMAND_RETRY"
        );
        *up.on_demand.lock().await = now.checked_sub(DNS_ON_DEMAND_RETRY * 2);
        up.resolve_if_empty().await;
        assert!(
            up.pick().is_some(),
            "looked up again once the retry has passed"
        );
    }

    #[tokio::test]
    async fn resolved_endpoints_are_not_looked_up_again_on_the_request_path() {
        let up = by_name("localhost");
        up.set_endpoints(vec!["192.0.2.7:8443".into()]);
        up.resolve_if_empty().await;
        let addrs: Vec<String> = up.endpoints.load().iter().map(|e| e.addr.clone()).collect();
        assert_eq!(
            addrs,
            ["192.0.2.7:8443"],
            "the refresh loop's job, not the request's"
        );
    }
}
