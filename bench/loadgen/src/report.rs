//! Latency histograms (HdrHistogram, nanosecond resolution, 3 significant digits) and the
//! summary every mode prints: p50, p90, p99, p99.9, max and mean, in microseconds.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::Duration;

/// The longest latency recorded as itself; anything longer is recorded as this.
pub const MAX_RECORDED: Duration = Duration::from_secs(120);

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED.as_nanos() as u64, 3).expect("static bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_nanos().min(u128::from(h.high())) as u64);
}

/// The percentiles this benchmark reports, in microseconds.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    let us = |nanos: u64| (nanos as f64 / 1e3 * 1e3).round() / 1e3;
    json!({
        "count": h.len(),
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p99.9": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 1e3 * 1e3).round() / 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for i in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(i)); // 1 µs .. 10 ms, uniform
        }
        let p = percentiles(&h);
        let near = |key: &str, want: f64| {
            let got = p[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= want * 0.001 + 0.001,
                "{key}: {got} != {want}"
            );
        };
        near("p50", 5000.0);
        near("p90", 9000.0);
        near("p99", 9900.0);
        near("p99.9", 9990.0);
        near("max", 10_000.0);
        assert_eq!(p["count"], 10_000);
    }

    #[test]
    fn one_outlier_shows_in_the_max_and_not_the_median() {
        let mut h = histogram();
        for _ in 0..999 {
            record(&mut h, Duration::from_micros(100));
        }
        record(&mut h, Duration::from_millis(250));
        let p = percentiles(&h);
        assert!((p["p50"].as_f64().unwrap() - 100.0).abs() < 0.1);
        assert!((p["max"].as_f64().unwrap() - 250_000.0).abs() < 250.0);
    }

    #[test]
    fn an_overlong_latency_is_kept_at_the_bound() {
        let mut h = histogram();
        record(&mut h, Duration::from_secs(3600));
        assert!(h.max() >= MAX_RECORDED.as_nanos() as u64 * 999 / 1000);
    }

    #[test]
    fn an_empty_histogram_says_so() {
        assert_eq!(percentiles(&histogram()), json!({"count": 0}));
    }
}
