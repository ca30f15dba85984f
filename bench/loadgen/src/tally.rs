//! What one connection's worker counted, merged across workers at the end of a run.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::http1::Response;
use crate::report::{self, histogram, record};

pub struct Tally {
    /// Open loop: from the scheduled send time. Closed loop: from the actual send time.
    pub latency: Histogram<u64>,
    /// Open loop only: actual send time minus scheduled send time.
    pub lateness: Histogram<u64>,
    /// Handshake mode only: from connect() to the finished TLS handshake.
    pub handshake: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub body_bytes: u64,
    /// Open loop: requests that fell due but could not be sent before the run's hard stop.
    pub unsent: u64,
    pub connects: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: histogram(),
            lateness: histogram(),
            handshake: histogram(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            body_bytes: 0,
            unsent: 0,
            connects: 0,
        }
    }
}

impl Tally {
    pub fn answered(&mut self, response: &Response, latency: Duration) {
        record(&mut self.latency, latency);
        *self.statuses.entry(response.status).or_default() += 1;
        self.body_bytes += response.body_bytes;
    }

    pub fn error(&mut self, what: impl std::fmt::Display) {
        let kind = what.to_string();
        // one bucket per kind of failure, not per message detail such as a port number
        let kind = kind.split(" (os error").next().unwrap_or(&kind).to_owned();
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.latency.add(&other.latency).expect("same bounds");
        self.lateness.add(&other.lateness).expect("same bounds");
        self.handshake.add(&other.handshake).expect("same bounds");
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.body_bytes += other.body_bytes;
        self.unsent += other.unsent;
        self.connects += other.connects;
    }

    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// The fields every mode reports; `seconds` is the measured window.
    pub fn summary(&self, seconds: f64) -> Value {
        json!({
            "answered": self.latency.len(),
            "ok": self.ok(),
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
            "unsent": self.unsent,
            "connects": self.connects,
            "ok_per_s": (self.ok() as f64 / seconds * 10.0).round() / 10.0,
            "body_bytes": self.body_bytes,
            "latency_us": report::percentiles(&self.latency),
        })
    }
}

pub fn merged(tallies: impl IntoIterator<Item = Tally>) -> Tally {
    let mut all = Tally::default();
    for t in tallies {
        all.merge(t);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_histograms() {
        let ok = Response {
            status: 200,
            body_bytes: 10,
            close: false,
        };
        let mut a = Tally::default();
        a.answered(&ok, Duration::from_micros(100));
        a.error("connect: Connection refused (os error 111)");
        let mut b = Tally::default();
        b.answered(&ok, Duration::from_micros(300));
        b.answered(&Response { status: 503, ..ok }, Duration::from_micros(200));
        b.error("connect: Connection refused (os error 111)");
        let all = merged([a, b]);
        assert_eq!((all.ok(), all.latency.len(), all.body_bytes), (2, 3, 30));
        assert_eq!(all.errors["connect: Connection refused"], 2);
        let s = all.summary(2.0);
        assert_eq!(s["ok_per_s"], 1.0);
        assert_eq!(s["statuses"]["503"], 1);
    }
}
