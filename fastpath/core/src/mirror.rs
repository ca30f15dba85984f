//! Traffic mirroring: fire-and-forget copies of a share of a route's requests to another
//! cluster, as Envoy's request mirror policies. The copy's answer is read and thrown away; the
//! caller never waits for it.
//!
//! The copies in flight are bounded per route: when the mirror is slow and the bound is
//! reached, further copies are dropped and counted, so a slow mirror costs lost copies, never
//! latency or memory on the primary path. Only bodies the primary path buffered anyway (up to
//! a limit) can be copied; a request with a larger or streamed body is not mirrored, and that
//! is counted too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::tunables::{
    MIRROR_COPY_TIMEOUT as COPY_TIMEOUT, MIRROR_MAX_BODY as MAX_BODY,
    MIRROR_MAX_IN_FLIGHT as MAX_IN_FLIGHT,
};

#[derive(Debug)]
pub struct Mirror {
    pub cluster: String,
    percent: f64,
    max_in_flight: usize,
    slots: Arc<Semaphore>,
    sent: AtomicU64,
    dropped: AtomicU64,
    too_large: AtomicU64,
    failed: AtomicU64,
}

/// Why a request selected for mirroring was not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not in the configured share.
    NotSelected,
    /// As many copies in flight as allowed.
    Full,
    /// A body larger than [`MAX_BODY`], or one streamed through without buffering.
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub cluster: String,
    pub sent: u64,
    pub dropped: u64,
    pub too_large: u64,
    pub failed: u64,
    pub in_flight: usize,
}

impl Mirror {
    pub fn new(cluster: String, percent: f64, max_in_flight: usize) -> Mirror {
        Mirror {
            cluster,
            percent,
            max_in_flight,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Whether to copy this request: `roll` is uniform in [0, 100); `body_ok` says the body
    /// is buffered and small enough. A permit is a slot held until the copy is done.
    pub fn admit(&self, roll: f64, body_ok: bool) -> Result<OwnedSemaphorePermit, Skip> {
        if roll >= self.percent {
            return Err(Skip::NotSelected);
        }
        if !body_ok {
            self.too_large.fetch_add(1, Ordering::Relaxed);
            return Err(Skip::TooLarge);
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                Ok(permit)
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(Skip::Full)
            }
        }
    }

    /// A copy that got no answer (the mirror was down, or reset it).
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> Report {
        Report {
            cluster: self.cluster.clone(),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            too_large: self.too_large.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            in_flight: self.max_in_flight - self.slots.available_permits(),
        }
    }
}

/// The Host a copy carries: the original's with `-shadow` after the name, as Envoy does
/// ("api.b:8080" becomes "api.b-shadow:8080"), so the mirror's logs tell copies apart.
pub fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_the_percent_of_uniform_rolls() {
        let m = Mirror::new("c".into(), 5.0, 100_000);
        let held: Vec<_> = (0..10_000)
            .filter_map(|i| m.admit(f64::from(i) / 100.0, true).ok())
            .collect();
        assert_eq!(held.len(), 500);
        assert_eq!(m.report().in_flight, 500);
        drop(held);
        assert_eq!(m.report().in_flight, 0);
    }

    #[test]
    fn a_full_mirror_drops_and_counts_and_frees_as_copies_finish() {
        let m = Mirror::new("c".into(), 100.0, 2);
        let a = m.admit(0.0, true).unwrap();
        let _b = m.admit(0.0, true).unwrap();
        assert_eq!(m.admit(0.0, true).unwrap_err(), Skip::Full);
        drop(a);
        assert!(m.admit(0.0, true).is_ok());
        let r = m.report();
        assert_eq!((r.sent, r.dropped), (3, 1));
    }

    #[test]
    fn large_bodies_are_skipped_and_counted_only_when_selected() {
        let m = Mirror::new("c".into(), 50.0, 2);
        assert_eq!(m.admit(75.0, false).unwrap_err(), Skip::NotSelected);
        assert_eq!(m.admit(25.0, false).unwrap_err(), Skip::TooLarge);
        assert_eq!(m.report().too_large, 1);
    }

    #[test]
    fn shadow_hosts_keep_the_port() {
        assert_eq!(shadow_host("api.b:8080"), "api.b-shadow:8080");
        assert_eq!(shadow_host("api"), "api-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
    }
}
