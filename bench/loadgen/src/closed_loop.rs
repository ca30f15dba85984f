//! Closed-loop load: every connection sends its next request as soon as the previous answer
//! is in. Gives maximum throughput (requests/s, and body MB/s for the bulk mode); its latencies
//! are service times, not latencies at an offered rate.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http1::Reader;
use crate::tally::{merged, Tally};
use crate::target::{announce_phases, Target};

pub struct Settings {
    pub connections: u64,
    pub warmup: Duration,
    pub duration: Duration,
}

pub fn run(target: &Target, s: &Settings, mode: &str) -> Value {
    let start = Instant::now();
    let phases = announce_phases(start, s.warmup, s.duration);
    let (from, until) = (start + s.warmup, start + s.warmup + s.duration);
    let tallies = thread::scope(|scope| {
        let workers: Vec<_> = (0..s.connections)
            .map(|_| scope.spawn(move || connection(target, from, until)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect::<Vec<_>>()
    });
    let all = merged(tallies);
    phases.join().expect("phase announcer panicked");
    let seconds = s.duration.as_secs_f64();
    let mut out = all.summary(seconds);
    out["mode"] = json!(mode);
    out["connections"] = json!(s.connections);
    out["warmup_s"] = json!(s.warmup.as_secs_f64());
    out["duration_s"] = json!(seconds);
    out["body_mb_per_s"] = json!((all.body_bytes as f64 / seconds / 1e6 * 100.0).round() / 100.0);
    out
}

fn connection(target: &Target, from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut stream = None;
    let mut reader = Reader::default();
    loop {
        let now = Instant::now();
        if now >= until {
            return tally;
        }
        let measured = now >= from;
        let mut conn = match stream.take() {
            Some(c) => c,
            None => match target.connect() {
                Ok(c) => {
                    tally.connects += 1;
                    reader = Reader::default();
                    c
                }
                Err(e) => {
                    if measured {
                        tally.error(format!("connect: {e}"));
                    }
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match reader.exchange(&mut conn, &target.request) {
            Ok(response) => {
                let done = Instant::now();
                // a response counts in the window it finished in
                if done >= from && done < until {
                    tally.answered(&response, done - sent);
                }
                if !response.close {
                    stream = Some(conn);
                }
            }
            Err(e) => {
                if measured {
                    tally.error(e);
                }
            }
        }
    }
}
