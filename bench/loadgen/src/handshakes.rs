//! New connections as fast as they complete: connect, a full mTLS handshake (client
//! certificate, no resumption), one request with `Connection: close`, then the next. Gives the
//! handshake rate a server sustains, and how long each handshake took.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::{json, Value};

use crate::http1::Reader;
use crate::report::{percentiles, record};
use crate::tally::{merged, Tally};
use crate::target::{announce_phases, Target};
use crate::tls::server_name;

pub struct Settings {
    pub connections: u64,
    pub warmup: Duration,
    pub duration: Duration,
}

/// `verified` makes one connection first, checking the server's chain; `tls` (which need not
/// verify) makes the load.
pub fn run(
    target: &Target,
    verified: &Arc<ClientConfig>,
    tls: &Arc<ClientConfig>,
    s: &Settings,
) -> Value {
    let negotiated = probe(target, verified);
    let start = Instant::now();
    let phases = announce_phases(start, s.warmup, s.duration);
    let (from, until) = (start + s.warmup, start + s.warmup + s.duration);
    let tallies = thread::scope(|scope| {
        let workers: Vec<_> = (0..s.connections)
            .map(|_| scope.spawn(move || worker(target, tls, from, until)))
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
    out["mode"] = json!("handshake");
    out["connections"] = json!(s.connections);
    out["warmup_s"] = json!(s.warmup.as_secs_f64());
    out["duration_s"] = json!(seconds);
    out["handshakes_per_s"] = out["ok_per_s"].clone();
    out["handshake_us"] = percentiles(&all.handshake);
    out["negotiated"] = negotiated;
    out
}

/// One connection up front, to report what was negotiated.
fn probe(target: &Target, tls: &Arc<ClientConfig>) -> Value {
    let mut tally = Tally::default();
    match once(target, tls, &mut tally, true) {
        Some(conn) => json!({
            "protocol": conn.protocol_version().map(|v| format!("{v:?}")),
            "cipher_suite": conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
            "key_exchange": conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
            "alpn": conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        }),
        None => json!({"error": tally.errors}),
    }
}

fn worker(target: &Target, tls: &Arc<ClientConfig>, from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let now = Instant::now();
        if now >= until {
            return tally;
        }
        let measured = now >= from;
        if once(target, tls, &mut tally, measured).is_none() && measured {
            thread::sleep(Duration::from_millis(1)); // a refusing server must not spin us
        }
    }
}

/// Connect, handshake, one request; the connection is returned (for `probe`) and then dropped.
fn once(
    target: &Target,
    tls: &Arc<ClientConfig>,
    tally: &mut Tally,
    measured: bool,
) -> Option<ClientConnection> {
    let started = Instant::now();
    let result = (|| -> Result<_, String> {
        let tcp = target.connect().map_err(|e| format!("connect: {e}"))?;
        let conn =
            ClientConnection::new(tls.clone(), server_name()).map_err(|e| format!("tls: {e}"))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        let handshake = started.elapsed();
        let response = Reader::default()
            .exchange(&mut stream, &target.request)
            .map_err(|e| format!("request: {e}"))?;
        Ok((stream.conn, handshake, response))
    })();
    match result {
        Ok((conn, handshake, response)) => {
            if measured {
                tally.connects += 1;
                record(&mut tally.handshake, handshake);
                tally.answered(&response, started.elapsed());
            }
            Some(conn)
        }
        Err(e) => {
            if measured {
                tally.error(e);
            }
            None
        }
    }
}
