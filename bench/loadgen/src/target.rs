//! The server under load and the one request sent to it, shared by every mode; and the clock
//! helpers that keep sends on time.

use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a read may block before the request counts as failed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The prepared request, written as is every time.
    pub request: Vec<u8>,
}

impl Target {
    pub fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(self.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(stream)
    }
}

pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// Timer slack 1 µs for the main thread, which every thread started afterwards inherits, so a
/// sleeping sender wakes when its request is due rather than up to 50 µs later. Call it before
/// starting threads. (`/proc/self` is the main thread's; there is no per-thread file.) Best
/// effort: where the write fails the default stays, and the lateness histogram shows the cost.
pub fn tight_timers() {
    let _ = std::fs::write("/proc/self/timerslack_ns", "1000");
}

/// Phase markers on stderr, one JSON line each, so a harness can sample the server's CPU and
/// memory over exactly the measured window: `measuring` when warm-up ends, `measured` at the end.
/// Join the handle before printing the report: a run can finish before its window closes.
pub fn announce_phases(start: Instant, warmup: Duration, duration: Duration) -> JoinHandle<()> {
    thread::spawn(move || {
        sleep_until(start + warmup);
        eprintln!("{{\"event\":\"measuring\"}}");
        sleep_until(start + warmup + duration);
        eprintln!("{{\"event\":\"measured\"}}");
    })
}
