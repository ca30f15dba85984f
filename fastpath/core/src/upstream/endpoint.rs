//! One endpoint of an upstream: its address, the requests in flight on it (for
//! least-request), its passive health (ejected for a back-off that doubles per consecutive
//! connect failure), and the slots of its connection pool (`pool.rs`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use hyper::client::conn::http2;

use crate::body::Body;
use crate::ewma::{self, PeakEwma};
use crate::tunables::{EJECT_BASE, EJECT_MAX};

#[derive(Debug)]
pub struct Endpoint {
    pub addr: String,
    pub in_flight: AtomicUsize,
    failures: AtomicU32,
    down_until: AtomicU64, // ms since `epoch`
    /// Idle HTTP/1.1 connections; a response body that ends cleanly returns its own here.
    pub(super) idle: super::h1::Idle,
    /// The HTTP/2 connection every request to this endpoint shares, once one is up.
    pub(super) multiplexed: Mutex<Option<http2::SendRequest<Body>>>,
    /// Held while an HTTP/2 connection is being opened, so that a burst arriving before it is
    /// up waits for it and shares it instead of each opening its own.
    pub(super) opening: tokio::sync::Mutex<()>,
    /// The peer negotiated HTTP/1.1 where HTTP/2 was offered (an older sidecar): its requests
    /// need a connection each, so they are not made to queue behind one another's handshakes.
    pub(super) http1_peer: AtomicBool,
    /// Its answers' round-trip times, for peak-EWMA balancing.
    pub latency: PeakEwma,
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
            idle: super::h1::Idle::default(),
            multiplexed: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            http1_peer: AtomicBool::new(false),
            latency: PeakEwma::new(
                ewma::DEFAULT_TAU,
                ewma::DEFAULT_RTT,
                tokio::time::Instant::now(),
            ),
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

    /// Consecutive connect failures so far: a request that waited for another's connect can
    /// tell whether it failed meanwhile.
    pub(super) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(super) fn connected(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.down_until.store(0, Ordering::Relaxed);
    }
}

/// One request in flight on an endpoint, as least-request counts them.
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
