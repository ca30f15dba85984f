//! Peak-EWMA latency, as Linkerd's balancer (and Finagle's before it): each endpoint's cost is
//! a moving average of its round-trip times that jumps at once to any slower sample ("peak")
//! and decays toward faster ones with time constant `tau`, times its requests in flight plus
//! one. Picking the cheaper of two random endpoints (power of two choices) steers load away
//! from an endpoint as soon as it slows down, without herding every caller onto the fastest.
//!
//! Time is passed in, never read, so tests step it by hand.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub use crate::tunables::{EWMA_INITIAL_RTT as DEFAULT_RTT, EWMA_TAU as DEFAULT_TAU};

#[derive(Debug)]
pub struct PeakEwma {
    tau_ns: f64,
    state: Mutex<(f64, Instant)>, // (ewma rtt in ns, last update)
}

impl PeakEwma {
    pub fn new(tau: Duration, initial: Duration, now: Instant) -> PeakEwma {
        PeakEwma {
            tau_ns: tau.as_nanos().max(1) as f64,
            state: Mutex::new((initial.as_nanos() as f64, now)),
        }
    }

    /// Folds in one round-trip time observed at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let rtt = rtt.as_nanos() as f64;
        if rtt > s.0 {
            s.0 = rtt; // peak: slowness counts at once
        } else {
            let elapsed = now.saturating_duration_since(s.1).as_nanos() as f64;
            let w = (-elapsed / self.tau_ns).exp();
            s.0 = s.0 * w + rtt * (1.0 - w);
        }
        s.1 = now;
    }

    /// The average RTT in nanoseconds, as of the last answer.
    pub fn rtt_ns(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The balancer's cost: the average RTT, scaled by how much is already waiting on it.
    pub fn cost(&self, in_flight: usize) -> f64 {
        self.rtt_ns() * (in_flight as f64 + 1.0)
    }
}

/// Of two candidates (by cost), the index of the cheaper; ties go to the first.
pub fn cheaper(a: (usize, f64), b: (usize, f64)) -> usize {
    if b.1 < a.1 {
        b.0
    } else {
        a.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_counts_at_once_and_fast_ones_decay_it() {
        let t0 = Instant::now();
        let e = PeakEwma::new(ms(10_000), ms(5), t0);
        e.observe(ms(100), t0);
        assert_eq!(e.rtt_ns(), 100e6, "the peak is taken as is");
        // One tau later a 1 ms answer has pulled it to about 100/e + 1(1 - 1/e) ≈ 37.4 ms.
        e.observe(ms(1), t0 + ms(10_000));
        let v = e.rtt_ns() / 1e6;
        assert!((37.0..38.0).contains(&v), "{v}");
        // Answers close together barely move it: the average is over time, not samples.
        e.observe(ms(1), t0 + ms(10_001));
        assert!(e.rtt_ns() / 1e6 > 37.0);
    }

    #[tokio::test(start_paused = true)]
    async fn cost_grows_with_requests_in_flight() {
        let t0 = Instant::now();
        let e = PeakEwma::new(DEFAULT_TAU, ms(10), t0);
        assert_eq!(e.cost(0), 10e6);
        assert_eq!(e.cost(3), 40e6);
    }

    #[tokio::test(start_paused = true)]
    async fn two_choices_steer_away_from_a_slow_endpoint() {
        let t0 = Instant::now();
        let fast = PeakEwma::new(DEFAULT_TAU, DEFAULT_RTT, t0);
        let slow = PeakEwma::new(DEFAULT_TAU, DEFAULT_RTT, t0);
        fast.observe(ms(2), t0 + ms(1000));
        slow.observe(ms(200), t0 + ms(1000));
        assert_eq!(cheaper((0, slow.cost(0)), (1, fast.cost(0))), 1);
        // Enough load waiting on the fast one makes the slow one worth a try.
        assert!(fast.cost(100) > slow.cost(0));
    }
}
