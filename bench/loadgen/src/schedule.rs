//! When each request is due in the open-loop mode. Sends are fixed in advance by the offered
//! rate, never by when the previous answer came back: a connection that stalls makes its later
//! requests late, and their latency counts from when they were due (no coordinated omission).

use std::time::{Duration, Instant};

/// The send times of one connection's share of a constant-rate stream.
///
/// Request `k` of the whole stream is due at `start + k / rate`; `connections` connections take
/// turns, so connection `c` sends requests `c, c + n, c + 2n, ...` (as wrk2 does).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    /// Requests per second of the whole stream.
    pub rate: f64,
    pub connection: u64,
    pub connections: u64,
}

impl Schedule {
    pub fn new(start: Instant, rate: f64, connection: u64, connections: u64) -> Schedule {
        assert!(rate > 0.0 && connections > 0 && connection < connections);
        Schedule {
            start,
            rate,
            connection,
            connections,
        }
    }

    /// When this connection's `k`-th request is due. Computed from the start each time, and
    /// not from a whole number of nanoseconds between requests, so rounding never accumulates.
    pub fn due(&self, k: u64) -> Instant {
        self.start + self.offset(k)
    }

    /// How many of this connection's requests fall due before `end` (measured from `start`).
    pub fn count_before(&self, end: Duration) -> u64 {
        let mut k = 0;
        while self.offset(k) < end {
            k += 1;
        }
        k
    }

    fn offset(&self, k: u64) -> Duration {
        let index = self.connection + k * self.connections;
        // f64 holds the offset to well under a nanosecond for any run shorter than days
        Duration::from_secs_f64(index as f64 / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_turns_at_the_stream_rate() {
        let start = Instant::now();
        let schedules: Vec<_> = (0..4).map(|c| Schedule::new(start, 1000.0, c, 4)).collect();
        let mut all: Vec<Duration> = schedules
            .iter()
            .flat_map(|s| (0..25).map(move |k| s.due(k) - start))
            .collect();
        all.sort();
        // 100 requests, exactly 1 ms apart, none twice
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, Duration::from_millis(i as u64));
        }
    }

    #[test]
    fn due_times_do_not_drift_over_a_long_run() {
        let start = Instant::now();
        // 1/3 µs does not divide evenly into nanoseconds
        let s = Schedule::new(start, 3_000_000.0, 0, 1);
        let late = s.due(3_000_000 * 600) - start; // ten minutes of requests
        let drift = late.abs_diff(Duration::from_secs(600));
        assert!(drift < Duration::from_millis(1), "drift {drift:?}");
    }

    #[test]
    fn counts_the_requests_due_in_a_window() {
        let start = Instant::now();
        let total: u64 = (0..3)
            .map(|c| Schedule::new(start, 1000.0, c, 3).count_before(Duration::from_secs(2)))
            .sum();
        assert_eq!(total, 2000);
        let one = Schedule::new(start, 1000.0, 2, 3);
        assert_eq!(one.count_before(Duration::from_millis(3)), 1); // only request 2
    }
}
