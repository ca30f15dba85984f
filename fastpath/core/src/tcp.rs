//! Opaque TCP: copying both ways until each side closes, and accounting for each connection
//! once — in `istio_tcp_*` counters and as one access log line — whether it was piped,
//! refused, or found no upstream.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::telemetry::{unix_nanos, AccessLog, HostPort, TcpKey, TcpOutcome, Telemetry};

/// One TCP connection's accounting: who, to what, decided by what, at which revision.
pub struct Conn {
    pub key: TcpKey,
    pub decided_by: String,
    pub revision: String,
    /// The TLS server name the client asked for, when capture read one.
    pub server_name: Option<String>,
    started: (SystemTime, Instant),
}

impl Conn {
    pub fn new(key: TcpKey, decided_by: impl Into<String>, revision: &str) -> Conn {
        Conn {
            key,
            decided_by: decided_by.into(),
            revision: revision.to_owned(),
            server_name: None,
            started: (SystemTime::now(), Instant::now()),
        }
    }

    fn log(self, telemetry: &Telemetry, outcome: &'static str, received: u64, sent: u64) {
        telemetry.log_access(AccessLog {
            start_unix_ms: unix_nanos(self.started.0) / 1_000_000,
            direction: self.key.direction,
            source: Arc::from(self.key.source.as_str()),
            destination: HostPort(Arc::from(self.key.destination.as_str()), self.key.port),
            method: http::Method::from_bytes(if self.server_name.is_some() {
                b"TLS"
            } else {
                b"TCP"
            })
            .unwrap_or_default(),
            path: self.server_name.unwrap_or_default(),
            status: 0,
            duration_ms: self.started.1.elapsed().as_secs_f64() * 1000.0,
            decided_by: Arc::from(self.decided_by),
            trace_id: String::new(),
            revision: Arc::from(self.revision),
            response_flags: "",
            tcp: Some(TcpOutcome {
                outcome,
                bytes_received: received,
                bytes_sent: sent,
            }),
        });
    }

    /// A connection closed without being piped: policy or REGISTRY_ONLY refused it.
    pub fn denied(self, telemetry: &Telemetry) {
        telemetry.record_tcp(self.key.clone(), |s| s.denied += 1);
        self.log(telemetry, "denied", 0, 0);
    }

    /// A permitted connection no upstream endpoint would take.
    pub fn connect_failed(self, telemetry: &Telemetry) {
        telemetry.record_tcp(self.key.clone(), |s| s.connect_failed += 1);
        self.log(telemetry, "connect-failed", 0, 0);
    }
}

/// Copies between the side that connected (`client`) and the side it reached (`server`),
/// half-closes passed through, then records the connection. Bytes are counted as Istio does:
/// `received` in the request direction (client to server), `sent` in the response direction.
pub async fn pipe<C, S>(telemetry: &Telemetry, conn: Conn, client: &mut C, server: &mut S)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    telemetry.record_tcp(conn.key.clone(), |s| s.opened += 1);
    let (received, sent) = tokio::io::copy_bidirectional(client, server)
        .await
        .unwrap_or((0, 0));
    telemetry.record_tcp(conn.key.clone(), |s| {
        s.closed += 1;
        s.bytes_received += received;
        s.bytes_sent += sent;
    });
    conn.log(telemetry, "closed", received, sent);
}
