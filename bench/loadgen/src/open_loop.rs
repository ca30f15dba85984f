//! Constant-rate load on keep-alive connections. Each request has a due time fixed in advance
//! (`schedule`); its latency runs from that due time to the last byte of the answer, so a slow
//! answer that delays the next send on the same connection is charged to the next request too.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http1::Reader;
use crate::report::{percentiles, record};
use crate::schedule::Schedule;
use crate::tally::{merged, Tally};
use crate::target::{announce_phases, sleep_until, Target};

pub struct Settings {
    pub rate: f64,
    pub connections: u64,
    pub warmup: Duration,
    pub duration: Duration,
}

/// After the last request falls due, how long its stragglers may take before they count as
/// unsent.
const GRACE: Duration = Duration::from_secs(5);

pub fn run(target: &Target, s: &Settings) -> Value {
    // Connect everything first: a connection's setup is not a request's latency.
    let streams: Vec<_> = (0..s.connections).map(|_| target.connect()).collect();
    let start = Instant::now() + Duration::from_millis(20);
    let phases = announce_phases(start, s.warmup, s.duration);
    let tallies = thread::scope(|scope| {
        let workers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(c, stream)| {
                let schedule = Schedule::new(start, s.rate, c as u64, s.connections);
                scope.spawn(move || connection(target, schedule, stream, s))
            })
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
    out["mode"] = json!("rate");
    out["target_rps"] = json!(s.rate);
    out["connections"] = json!(s.connections);
    out["warmup_s"] = json!(s.warmup.as_secs_f64());
    out["duration_s"] = json!(seconds);
    out["send_lateness_us"] = percentiles(&all.lateness);
    out
}

fn connection(
    target: &Target,
    schedule: Schedule,
    first: std::io::Result<std::net::TcpStream>,
    s: &Settings,
) -> Tally {
    let mut tally = Tally::default();
    let measured_from = schedule.start + s.warmup;
    let count = schedule.count_before(s.warmup + s.duration);
    let hard_stop = schedule.start + s.warmup + s.duration + GRACE;
    let mut stream = first.map_err(|e| tally.error(format!("connect: {e}"))).ok();
    tally.connects += u64::from(stream.is_some());
    let mut reader = Reader::default();
    for k in 0..count {
        let due = schedule.due(k);
        let measured = due >= measured_from;
        if Instant::now() > hard_stop {
            tally.unsent += (k..count)
                .filter(|&j| schedule.due(j) >= measured_from)
                .count() as u64;
            break;
        }
        sleep_until(due);
        let conn = match stream.take() {
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
                    continue;
                }
            },
        };
        let mut conn = conn;
        let sent = Instant::now();
        match reader.exchange(&mut conn, &target.request) {
            Ok(response) => {
                let done = Instant::now();
                if measured {
                    tally.answered(&response, done - due);
                    record(&mut tally.lateness, sent - due);
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
    tally
}
