//! Outlier detection: passive health from the answers a cluster's endpoints give, as Envoy's
//! consecutive-error detectors.
//!
//! Every finished try reports its outcome. An endpoint that gives `consecutive5xx` 5xx answers
//! in a row (or `consecutiveGatewayErrors` 502/503/504, or `consecutiveConnectFailures` failed
//! connects) is ejected: left out of load balancing for `baseEjectionTime` times the number of
//! times it has been ejected (capped at `maxEjectionTime`), so an endpoint that keeps failing
//! stays out longer each time. An endpoint that stays in for a whole `interval` earns one
//! ejection back. At most `maxEjectionPercent` of endpoints are out at once, and when fewer
//! than `panicThresholdPercent` are healthy every endpoint is used again (Envoy's panic mode):
//! better to spread load over sick endpoints than pile all of it on one or two.
//!
//! Time is passed in, never read, so tests step it by hand; the request path passes tokio's
//! clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::OutlierDetection;
use crate::retry::Outcome;

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    #[serde(rename = "consecutive_5xx")]
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveConnectFailures,
}

#[derive(Debug, Default)]
struct Host {
    errors_5xx: u32,
    gateway_errors: u32,
    connect_failures: u32,
    /// Ejections not yet earned back; the next ejection lasts `base * (ejections + 1)`.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// When it last came back (or was last ejected), for earning ejections back.
    since: Option<Instant>,
}

impl Host {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }
}

#[derive(Debug)]
struct State {
    hosts: HashMap<String, Host>,
    next_sweep: Instant,
    ejected_total: HashMap<Reason, u64>,
}

#[derive(Debug)]
pub struct Detector {
    consecutive_5xx: Option<u32>,
    consecutive_gateway_errors: Option<u32>,
    consecutive_connect_failures: Option<u32>,
    interval: Duration,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejection_percent: f64,
    panic_threshold_percent: f64,
    state: Mutex<State>,
}

/// One endpoint as admin output shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    pub address: String,
    pub ejected: bool,
    /// How much longer it stays out, if ejected.
    pub ejected_for_ms: Option<u64>,
    /// Ejections not yet earned back (the multiplier of the next ejection's length).
    pub ejections: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub hosts: Vec<HostReport>,
    /// Ejections since the cluster was created, by reason.
    pub ejections_total: Vec<(Reason, u64)>,
    pub ejected_now: usize,
}

impl Detector {
    pub fn new(config: &OutlierDetection, now: Instant) -> Detector {
        let interval = Duration::from_millis(config.interval_ms.max(1));
        let base = Duration::from_millis(config.base_ejection_time_ms.max(1));
        Detector {
            consecutive_5xx: config.consecutive_5xx.filter(|&n| n > 0),
            consecutive_gateway_errors: config.consecutive_gateway_errors.filter(|&n| n > 0),
            consecutive_connect_failures: config.consecutive_connect_failures.filter(|&n| n > 0),
            interval,
            base_ejection: base,
            max_ejection: Duration::from_millis(config.max_ejection_time_ms).max(base),
            max_ejection_percent: config.max_ejection_percent,
            panic_threshold_percent: config.panic_threshold_percent,
            state: Mutex::new(State {
                hosts: HashMap::new(),
                next_sweep: now + interval,
                ejected_total: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one try's outcome at `addr`, one of `total` endpoints; ejects it if that makes
    /// a run long enough and the ejection limit allows. Returns the ejection, if any.
    pub fn record(
        &self,
        addr: &str,
        outcome: Outcome,
        total: usize,
        now: Instant,
    ) -> Option<Reason> {
        if outcome == Outcome::Overflow {
            return None; // refused here, before it reached the endpoint: says nothing of it
        }
        let mut state = self.lock();
        self.sweep(&mut state, now);
        let ejected_now = state.hosts.values().filter(|h| h.ejected(now)).count();
        let host = state.hosts.entry(addr.to_owned()).or_default();
        match outcome {
            Outcome::Status(s) if (500..600).contains(&s) => {
                host.errors_5xx += 1;
                if matches!(s, 502..=504) {
                    host.gateway_errors += 1;
                } else {
                    host.gateway_errors = 0;
                }
                host.connect_failures = 0;
            }
            Outcome::Status(_) => {
                host.errors_5xx = 0;
                host.gateway_errors = 0;
                host.connect_failures = 0;
            }
            // Failures the sidecar sees itself count as gateway errors too, as Envoy counts
            // them when local-origin errors are not split out.
            Outcome::ConnectFailure => {
                host.connect_failures += 1;
                host.errors_5xx += 1;
                host.gateway_errors += 1;
            }
            Outcome::Reset | Outcome::RefusedStream | Outcome::Timeout | Outcome::Overflow => {
                host.errors_5xx += 1;
                host.gateway_errors += 1;
                host.connect_failures = 0;
            }
        }
        if host.ejected(now) {
            return None; // an answer still arriving from before it was ejected
        }
        let over = |count: u32, limit: Option<u32>| limit.is_some_and(|l| count >= l);
        let reason = if over(host.connect_failures, self.consecutive_connect_failures) {
            Reason::ConsecutiveConnectFailures
        } else if over(host.gateway_errors, self.consecutive_gateway_errors) {
            Reason::ConsecutiveGatewayErrors
        } else if over(host.errors_5xx, self.consecutive_5xx) {
            Reason::Consecutive5xx
        } else {
            return None;
        };
        // Envoy's rule: no ejection once the ejected share has reached the maximum.
        let total = total.max(1);
        if ejected_now as f64 * 100.0 >= self.max_ejection_percent * total as f64 {
            return None;
        }
        host.ejections += 1;
        let length = (self.base_ejection * host.ejections).min(self.max_ejection);
        host.ejected_until = Some(now + length);
        host.since = Some(now + length);
        host.errors_5xx = 0;
        host.gateway_errors = 0;
        host.connect_failures = 0;
        *state.ejected_total.entry(reason).or_default() += 1;
        Some(reason)
    }

    /// Once per interval: every endpoint that has stayed in for a whole interval earns one
    /// ejection back, so a long-healthy endpoint's next ejection is short again.
    fn sweep(&self, state: &mut State, now: Instant) {
        if now < state.next_sweep {
            return;
        }
        for host in state.hosts.values_mut() {
            if host.ejections == 0 || host.ejected(now) {
                continue;
            }
            let since = host.since.unwrap_or(now);
            // Sweeps run lazily, on traffic: count every whole interval since the last one.
            let earned = (now.saturating_duration_since(since).as_millis()
                / self.interval.as_millis().max(1)) as u32;
            let earned = earned.min(host.ejections);
            host.ejections -= earned;
            host.since = Some(since + self.interval * earned);
        }
        state.next_sweep = now + self.interval;
    }

    pub fn ejected(&self, addr: &str, now: Instant) -> bool {
        self.lock().hosts.get(addr).is_some_and(|h| h.ejected(now))
    }

    /// The endpoints load balancing may pick from: those not ejected, unless that leaves
    /// fewer than the panic threshold, then all of them.
    pub fn usable<'a, T>(
        &self,
        all: &'a [T],
        addr: impl Fn(&T) -> &str,
        now: Instant,
    ) -> Vec<&'a T> {
        let mut state = self.lock();
        self.sweep(&mut state, now);
        let healthy: Vec<&T> = all
            .iter()
            .filter(|e| !state.hosts.get(addr(e)).is_some_and(|h| h.ejected(now)))
            .collect();
        if healthy.is_empty()
            || (healthy.len() as f64) * 100.0 < self.panic_threshold_percent * all.len() as f64
        {
            return all.iter().collect();
        }
        healthy
    }

    /// Forgets endpoints that are gone, so a reused address starts fresh.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().hosts.retain(|a, _| keep(a));
    }

    pub fn report(&self, now: Instant) -> Report {
        let state = self.lock();
        let mut hosts: Vec<HostReport> = state
            .hosts
            .iter()
            .map(|(a, h)| HostReport {
                address: a.clone(),
                ejected: h.ejected(now),
                ejected_for_ms: h
                    .ejected_until
                    .filter(|_| h.ejected(now))
                    .map(|t| t.saturating_duration_since(now).as_millis() as u64),
                ejections: h.ejections,
                consecutive_5xx: h.errors_5xx,
                consecutive_gateway_errors: h.gateway_errors,
                consecutive_connect_failures: h.connect_failures,
            })
            .collect();
        hosts.sort_by(|a, b| a.address.cmp(&b.address));
        let mut ejections_total: Vec<(Reason, u64)> =
            state.ejected_total.iter().map(|(r, n)| (*r, *n)).collect();
        ejections_total.sort_by_key(|(r, _)| *r as u8);
        Report {
            ejected_now: hosts.iter().filter(|h| h.ejected).count(),
            hosts,
            ejections_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            consecutive_connect_failures: Some(2),
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
            max_ejection_percent: 50.0,
            panic_threshold_percent: 0.0,
        }
    }

    fn fail(d: &Detector, addr: &str, times: u32, now: Instant) -> Option<Reason> {
        (0..times)
            .map(|_| d.record(addr, Outcome::Status(500), 4, now))
            .last()
            .flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_and_a_success_breaks_the_run() {
        let t0 = Instant::now();
        let d = Detector::new(&config(), t0);
        assert_eq!(fail(&d, "a", 2, t0), None);
        d.record("a", Outcome::Status(200), 4, t0);
        assert_eq!(fail(&d, "a", 2, t0), None, "the run started again");
        assert_eq!(fail(&d, "a", 1, t0), Some(Reason::Consecutive5xx));
        assert!(d.ejected("a", t0));
        assert!(!d.ejected("b", t0));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(d.ejected("a", Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !d.ejected("a", Instant::now()),
            "back after baseEjectionTime"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_ejection_lasts_longer_and_a_healthy_interval_earns_one_back() {
        let t0 = Instant::now();
        let d = Detector::new(&config(), t0);
        fail(&d, "a", 3, t0);
        let t1 = t0 + Duration::from_secs(30);
        assert!(!d.ejected("a", t1));
        assert_eq!(fail(&d, "a", 3, t1), Some(Reason::Consecutive5xx));
        assert!(d.ejected("a", t1 + Duration::from_secs(59)), "2 × 30s");
        let t2 = t1 + Duration::from_secs(60);
        assert!(!d.ejected("a", t2));
        assert_eq!(d.report(t2).hosts[0].ejections, 2);
        // One whole interval in: one ejection earned back, so the next lasts 2 × 30s, not 3 ×.
        let t3 = t2 + Duration::from_secs(10);
        d.record("a", Outcome::Status(200), 4, t3);
        assert_eq!(d.report(t3).hosts[0].ejections, 1);
        fail(&d, "a", 3, t3);
        assert!(d.ejected("a", t3 + Duration::from_secs(59)));
        assert!(!d.ejected("a", t3 + Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_length_is_capped() {
        let t0 = Instant::now();
        let mut c = config();
        c.max_ejection_time_ms = 45_000;
        let d = Detector::new(&c, t0);
        fail(&d, "a", 3, t0);
        let t1 = t0 + Duration::from_secs(30);
        fail(&d, "a", 3, t1);
        assert!(
            !d.ejected("a", t1 + Duration::from_secs(45)),
            "capped at 45s, not 60s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connect_failures_and_gateway_errors_have_their_own_runs() {
        let t0 = Instant::now();
        let mut c = config();
        c.consecutive_5xx = None;
        c.consecutive_gateway_errors = Some(2);
        let d = Detector::new(&c, t0);
        d.record("a", Outcome::Status(503), 4, t0);
        assert_eq!(
            d.record("a", Outcome::Status(500), 4, t0),
            None,
            "500 is no gateway error"
        );
        d.record("a", Outcome::Status(502), 4, t0);
        assert_eq!(
            d.record("a", Outcome::Timeout, 4, t0),
            Some(Reason::ConsecutiveGatewayErrors)
        );
        d.record("b", Outcome::ConnectFailure, 4, t0);
        assert_eq!(
            d.record("b", Outcome::ConnectFailure, 4, t0),
            Some(Reason::ConsecutiveConnectFailures),
            "connect failures are checked first"
        );
        let report = d.report(t0);
        assert_eq!(report.ejected_now, 2);
        assert_eq!(
            report.ejections_total,
            vec![
                (Reason::ConsecutiveGatewayErrors, 1),
                (Reason::ConsecutiveConnectFailures, 1)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_ejection_percent_are_out() {
        let t0 = Instant::now();
        let d = Detector::new(&config(), t0); // 50% of 4
        assert!(fail(&d, "a", 3, t0).is_some());
        assert!(fail(&d, "b", 3, t0).is_some());
        assert_eq!(fail(&d, "c", 3, t0), None, "two of four are out already");
        assert!(!d.ejected("c", t0));
    }

    #[tokio::test(start_paused = true)]
    async fn panic_threshold_uses_every_endpoint() {
        let t0 = Instant::now();
        let mut c = config();
        c.max_ejection_percent = 100.0;
        c.panic_threshold_percent = 50.0;
        let d = Detector::new(&c, t0);
        let all = ["a", "b", "c", "d"];
        fail(&d, "a", 3, t0);
        assert_eq!(d.usable(&all, |e| e, t0), vec![&"b", &"c", &"d"]);
        fail(&d, "b", 3, t0);
        assert_eq!(
            d.usable(&all, |e| e, t0).len(),
            2,
            "50% healthy is not below 50%"
        );
        fail(&d, "c", 3, t0);
        assert_eq!(
            d.usable(&all, |e| e, t0).len(),
            4,
            "25% healthy: panic, use all"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_arriving_while_ejected_do_not_extend_it() {
        let t0 = Instant::now();
        let d = Detector::new(&config(), t0);
        fail(&d, "a", 3, t0);
        assert_eq!(fail(&d, "a", 6, t0), None);
        assert_eq!(d.report(t0).hosts[0].ejections, 1);
    }
}
