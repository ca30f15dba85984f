//! Retry decisions: which outcomes a route's `retryOn` covers, back-off between tries, and the
//! retry budget that stops retries from multiplying load on a struggling upstream.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, which the request path reads too: a paused-time test sees budgets refill.
use tokio::time::Instant;

use crate::config::{RetryBudget, RetryPolicy};
use crate::tunables::{RETRY_BACK_OFF_BASE, RETRY_BACK_OFF_MAX};

/// How one try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    ConnectFailure,
    Reset,
    RefusedStream,
    Timeout,
    /// The circuit breaker refused the try before it was sent: never retried.
    Overflow,
}

pub fn retryable(policy: &RetryPolicy, outcome: Outcome) -> bool {
    policy
        .retry_on
        .iter()
        .any(|on| match (on.as_str(), outcome) {
            ("5xx", Outcome::Status(s)) => (500..600).contains(&s),
            ("5xx", Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout) => true,
            ("gateway-error", Outcome::Status(s)) => matches!(s, 502..=504),
            ("gateway-error", Outcome::Timeout) => true,
            ("reset", Outcome::Reset) => true,
            ("connect-failure", Outcome::ConnectFailure) => true,
            ("refused-stream", Outcome::RefusedStream) => true,
            ("retriable-4xx", Outcome::Status(409)) => true,
            _ => false,
        })
}

/// Exponential back-off with full jitter: 25 ms base, capped at 250 ms (Envoy's defaults).
pub fn back_off(retry: u32, roll: f64) -> Duration {
    let cap = (RETRY_BACK_OFF_BASE * 2u32.pow(retry.min(4))).min(RETRY_BACK_OFF_MAX);
    cap.mul_f64(roll.clamp(0.0, 1.0))
}

/// A token bucket per route: each request deposits `percent`/100 of a retry, each retry takes
/// one, and `minRetriesPerSecond` are always available so low traffic can still retry.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    pub fn new(config: &RetryBudget, now: Instant) -> Budget {
        Budget {
            ratio: config.percent / 100.0,
            min_per_second: f64::from(config.min_retries_per_second),
            state: Mutex::new((f64::from(config.min_retries_per_second), now)),
        }
    }

    fn cap(&self) -> f64 {
        self.min_per_second.max(1.0) * 10.0
    }

    pub fn deposit(&self, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, now);
        s.0 = (s.0 + self.ratio).min(self.cap());
    }

    pub fn withdraw(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&self, s: &mut (f64, Instant), now: Instant) {
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.min_per_second).min(self.cap());
        s.1 = now;
    }
}

/// Budgets by route name, made when a config is compiled.
#[derive(Debug, Default)]
pub struct Budgets(pub HashMap<String, Budget>);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str]) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout_ms: None,
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            budget: None,
        }
    }

    #[test]
    fn retry_on_conditions() {
        let gw = policy(&["gateway-error"]);
        assert!(retryable(&gw, Outcome::Status(503)));
        assert!(!retryable(&gw, Outcome::Status(500)));
        assert!(!retryable(&gw, Outcome::ConnectFailure));
        let cf = policy(&["connect-failure", "retriable-4xx"]);
        assert!(retryable(&cf, Outcome::ConnectFailure));
        assert!(retryable(&cf, Outcome::Status(409)));
        assert!(!retryable(&cf, Outcome::Status(404)));
        assert!(retryable(&policy(&["5xx"]), Outcome::Reset));
    }

    #[test]
    fn back_off_is_capped_and_jittered() {
        assert_eq!(back_off(0, 1.0), Duration::from_millis(25));
        assert_eq!(back_off(10, 1.0), Duration::from_millis(250));
        assert_eq!(back_off(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let t0 = Instant::now();
        let b = Budget::new(
            &RetryBudget {
                percent: 20.0,
                min_retries_per_second: 0,
            },
            t0,
        );
        for _ in 0..100 {
            b.deposit(t0);
        }
        let granted = (0..100).filter(|_| b.withdraw(t0)).count();
        assert_eq!(
            granted, 10,
            "20% of 100 requests, capped by the bucket size of 10"
        );
    }

    #[test]
    fn budget_refills_at_the_minimum_rate() {
        let t0 = Instant::now();
        let b = Budget::new(
            &RetryBudget {
                percent: 1.0,
                min_retries_per_second: 2,
            },
            t0,
        );
        assert!(b.withdraw(t0));
        assert!(b.withdraw(t0));
        assert!(!b.withdraw(t0));
        assert!(
            b.withdraw(t0 + Duration::from_millis(500)),
            "one more after half a second"
        );
    }
}
