//! Circuit breaking per cluster: bounds on the connections, pending requests, requests and
//! retries one sidecar has outstanding to one destination, as Envoy's cluster circuit breakers.
//!
//! Admission never waits: a request over a limit is refused at once (the caller answers 503
//! with Istio's response flag `UO`), so a slow destination costs its callers fast errors, not
//! a growing queue of waiting requests. Each admitted unit is a guard that gives its slot back
//! when dropped, however the request ends.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::config::CircuitBreaker;

/// Which limit a refused request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

impl Limit {
    const ALL: [Limit; 4] = [
        Limit::Connections,
        Limit::PendingRequests,
        Limit::Requests,
        Limit::Retries,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One gauge and its bound. `max: None` is unlimited, but still counted so admin output
/// shows how close a cluster runs to a limit it might be given.
#[derive(Debug)]
struct Gauge {
    max: Option<u32>,
    open: AtomicU32,
    overflows: AtomicU64,
}

impl Gauge {
    fn new(max: Option<u32>) -> Gauge {
        Gauge {
            max,
            open: AtomicU32::new(0),
            overflows: AtomicU64::new(0),
        }
    }

    /// Takes a slot if one is free; compare-and-swap so concurrent callers never overshoot.
    fn try_take(&self) -> bool {
        let Some(max) = self.max else {
            self.open.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.overflows.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cluster's breaker. Cheap when unconfigured: every limit is `None` and admission is an
/// atomic add.
#[derive(Debug)]
pub struct Breaker {
    gauges: [Gauge; 4],
}

/// A slot held until dropped.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    limit: Limit,
}

/// `body`, holding `permit` until the body is done or dropped: a request counts against
/// `maxRequests` until its whole answer has gone back, not only its headers.
pub fn hold(body: crate::body::Body, permit: Permit) -> crate::body::Body {
    use http_body_util::BodyExt;
    body.map_frame(move |frame| {
        let _held = &permit;
        frame
    })
    .boxed()
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.gauges[self.limit.index()].give_back();
    }
}

/// What admin output and metrics show of a breaker: per limit, the bound, what is open now,
/// and how many requests it refused since the cluster was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GaugeReport {
    pub limit: Limit,
    pub max: Option<u32>,
    pub open: u32,
    pub overflows: u64,
}

impl Breaker {
    pub fn new(config: Option<&CircuitBreaker>) -> Breaker {
        let c = config.cloned().unwrap_or_default();
        Breaker {
            gauges: [
                Gauge::new(c.max_connections),
                Gauge::new(c.max_pending_requests),
                Gauge::new(c.max_requests),
                Gauge::new(c.max_retries),
            ],
        }
    }

    /// Admits one unit against `limit`, or says which limit refused it.
    pub fn admit(self: &Arc<Self>, limit: Limit) -> Result<Permit, Limit> {
        if self.gauges[limit.index()].try_take() {
            Ok(Permit {
                breaker: self.clone(),
                limit,
            })
        } else {
            Err(limit)
        }
    }

    /// How many units of `limit` are held now.
    pub fn open(&self, limit: Limit) -> u32 {
        self.gauges[limit.index()].open.load(Ordering::Acquire)
    }

    pub fn overflows(&self, limit: Limit) -> u64 {
        self.gauges[limit.index()].overflows.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> Vec<GaugeReport> {
        Limit::ALL
            .iter()
            .map(|&limit| {
                let g = &self.gauges[limit.index()];
                GaugeReport {
                    limit,
                    max: g.max,
                    open: g.open.load(Ordering::Acquire),
                    overflows: g.overflows.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(requests: u32, retries: u32) -> Arc<Breaker> {
        Arc::new(Breaker::new(Some(&CircuitBreaker {
            max_connections: Some(2),
            max_pending_requests: Some(1),
            max_requests: Some(requests),
            max_retries: Some(retries),
        })))
    }

    #[test]
    fn a_limit_refuses_at_once_and_frees_when_a_permit_drops() {
        let b = breaker(2, 1);
        let first = b.admit(Limit::Requests).unwrap();
        let _second = b.admit(Limit::Requests).unwrap();
        assert_eq!(b.admit(Limit::Requests).unwrap_err(), Limit::Requests);
        assert_eq!(b.overflows(Limit::Requests), 1);
        drop(first);
        assert!(b.admit(Limit::Requests).is_ok(), "a slot came back");
        assert_eq!(
            b.open(Limit::Requests),
            1,
            "the temporary permit was dropped too"
        );
    }

    #[test]
    fn limits_are_independent() {
        let b = breaker(1, 1);
        let _r = b.admit(Limit::Requests).unwrap();
        let _t = b.admit(Limit::Retries).unwrap();
        assert!(b.admit(Limit::Retries).is_err());
        let _p = b.admit(Limit::PendingRequests).unwrap();
        assert!(b.admit(Limit::PendingRequests).is_err());
        let _c1 = b.admit(Limit::Connections).unwrap();
        let _c2 = b.admit(Limit::Connections).unwrap();
        assert!(b.admit(Limit::Connections).is_err());
        let report = b.report();
        assert_eq!(
            report
                .iter()
                .map(|g| (g.limit, g.open, g.overflows))
                .collect::<Vec<_>>(),
            vec![
                (Limit::Connections, 2, 1),
                (Limit::PendingRequests, 1, 1),
                (Limit::Requests, 1, 0),
                (Limit::Retries, 1, 1),
            ]
        );
    }

    #[test]
    fn unconfigured_admits_everything_but_still_counts() {
        let b = Arc::new(Breaker::new(None));
        let permits: Vec<_> = (0..1000)
            .map(|_| b.admit(Limit::Requests).unwrap())
            .collect();
        assert_eq!(b.open(Limit::Requests), 1000);
        drop(permits);
        assert_eq!(b.open(Limit::Requests), 0);
        assert_eq!(b.overflows(Limit::Requests), 0);
    }

    #[test]
    fn concurrent_admission_never_overshoots() {
        let b = breaker(5, 0);
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(p) = b.admit(Limit::Requests) {
                            peak.fetch_max(b.open(Limit::Requests), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 5);
        assert_eq!(b.open(Limit::Requests), 0);
    }
}
