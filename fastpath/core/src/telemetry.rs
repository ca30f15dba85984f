//! Request telemetry kept in Rust: counters, latency and body-size histograms per (direction,
//! source, destination, port, response code), TCP byte counts, and a bounded ring of finished spans.
//!
//! The agent drains these in batches over the binding; nothing here calls into Python, and a
//! full span ring drops the oldest span rather than block a request. Spans are recorded only
//! while something drains them (`record_spans`): a sidecar with no exporter keeps none, so its
//! memory does not grow by a ring of spans nobody reads.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Istio's default buckets for `istio_request_duration_milliseconds`, so dashboards line up.
pub const BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
];
/// Istio's buckets for `istio_request_bytes` / `istio_response_bytes` (powers of ten from one
/// byte to 10 MB, as its Prometheus defaults have them), in bytes.
pub const BUCKETS_BYTES: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];
pub use crate::tunables::DEFAULT_SPAN_CAPACITY;

/// The labels of one request's counters. The strings are shared (`Arc<str>`) with the exchange
/// and its access log entry, so a request copies none of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RequestKey {
    pub direction: &'static str, // "inbound" | "outbound"
    pub source: Arc<str>,        // SPIFFE ID of the caller ("unknown" for plaintext)
    pub destination: Arc<str>,   // "ns/service"
    pub port: u16,
    pub code: u16,
    pub policy: Arc<str>, // what decided: a route name outbound, a policy inbound
    pub protocol: &'static str, // "http" | "grpc" (Istio's `request_protocol`)
    /// The call's `grpc-status`; none for plain HTTP, or a call that ended without one.
    pub grpc_status: Option<u16>,
    /// Istio's response flags: `UO` (circuit breaker), `FI`/`DI` (faults); empty for none.
    pub response_flags: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestStats {
    pub count: u64,
    pub sum_ms: f64,
    pub buckets: Vec<u64>, // cumulative counts per BUCKETS_MS bound
}

/// Body sizes of the requests of one key, request and response, once each exchange has ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SizeStats {
    pub count: u64,
    pub request_sum: u64,
    pub request_buckets: Vec<u64>, // cumulative counts per BUCKETS_BYTES bound
    pub response_sum: u64,
    pub response_buckets: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TcpKey {
    pub direction: &'static str,
    pub source: String,
    pub destination: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TcpStats {
    pub opened: u64,
    pub closed: u64,
    pub denied: u64,
    /// Permitted connections no upstream endpoint would take.
    pub connect_failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start_unix_nano: u128,
    pub end_unix_nano: u128,
    pub attributes: Vec<(String, String)>,
}

/// One request as an access log line; the agent writes these as JSON lines.
///
/// The entry is made on the proxy's thread and freed on the one that drains it, where each
/// string freed costs a cross-thread free in the allocator: so the strings a request shares
/// with its connection or its config (source, destination, revision) are `Arc<str>`, and the
/// method is `http::Method` (no allocation for the standard ones).
#[derive(Debug, Clone, Serialize)]
pub struct AccessLog {
    pub start_unix_ms: u128,
    pub direction: &'static str,
    pub source: Arc<str>,
    /// "ns/service:port".
    pub destination: HostPort,
    #[serde(serialize_with = "method_str")]
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub duration_ms: f64,
    pub decided_by: Arc<str>,
    pub trace_id: String,
    pub revision: Arc<str>,
    pub response_flags: &'static str,
    /// For a TCP connection (method `TCP`, or `TLS` with the server name as `path`): how it
    /// ended and the bytes each way. Absent for HTTP requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpOutcome>,
}

/// A destination and its port, written "ns/service:port" when the entry is serialized rather
/// than formatted on the request path.
#[derive(Debug, Clone)]
pub struct HostPort(pub Arc<str>, pub u16);

impl Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}:{}", self.0, self.1))
    }
}

fn method_str<S: serde::Serializer>(method: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(method.as_str())
}

/// How a TCP connection ended, for its access log line.
#[derive(Debug, Clone, Serialize)]
pub struct TcpOutcome {
    /// `closed` (both sides done), `denied` (policy or REGISTRY_ONLY refused it) or
    /// `connect-failed` (no upstream could be reached).
    pub outcome: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, Serialize)]
struct Snapshot<'a> {
    requests: Vec<(&'a RequestKey, RequestStats)>,
    sizes: Vec<(&'a RequestKey, SizeStats)>,
    tcp: Vec<(&'a TcpKey, &'a TcpStats)>,
    spans_dropped: u64,
    access_logs_dropped: u64,
}

#[derive(Debug)]
pub struct Telemetry {
    /// One slot per request key, holding its duration and size counts: a request finds its
    /// slot once, when its head is answered, and adds its sizes to that slot when its body
    /// ends, instead of hashing the key a second time.
    requests: Mutex<HashMap<RequestKey, Arc<Slot>>>,
    owner: u64,
    tcp: Mutex<HashMap<TcpKey, TcpStats>>,
    spans: Mutex<Ring<Span>>,
    // Off when no one drains spans: sampling still propagates in `traceparent`, but this hop
    // builds and keeps no span.
    spans_on: AtomicBool,
    access: Mutex<Ring<AccessLog>>,
}

/// The counts of one request key.
#[derive(Debug)]
pub struct Slot {
    /// Which Telemetry this slot is in, and for which key: what a thread's last slot is
    /// checked against.
    owner: u64,
    key: RequestKey,
    counts: Mutex<(RequestStats, SizeStats)>,
}

/// Each Telemetry's own number, so a thread's last slot is never taken for another's.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The slot this thread counted a request in last. A worker's consecutive requests mostly
    /// share their key (the same caller, port, policy and status), and comparing a key costs a
    /// small part of hashing it: the map keeps std's SipHash, since a key holds what callers
    /// send (an outbound authority).
    static LAST: RefCell<Option<Arc<Slot>>> = const { RefCell::new(None) };
}

impl Slot {
    fn new(owner: u64, key: RequestKey) -> Slot {
        let requests = RequestStats {
            buckets: vec![0; BUCKETS_MS.len()],
            ..Default::default()
        };
        let sizes = SizeStats {
            request_buckets: vec![0; BUCKETS_BYTES.len()],
            response_buckets: vec![0; BUCKETS_BYTES.len()],
            ..Default::default()
        };
        Slot {
            owner,
            key,
            counts: Mutex::new((requests, sizes)),
        }
    }

    /// One finished exchange's body sizes: what the caller sent, what it was answered.
    pub fn record_sizes(&self, request: u64, response: u64) {
        let stats = &mut lock(&self.counts).1;
        stats.count += 1;
        stats.request_sum += request;
        stats.response_sum += response;
        for (i, bound) in BUCKETS_BYTES.iter().enumerate() {
            stats.request_buckets[i] += u64::from(request as f64 <= *bound);
            stats.response_buckets[i] += u64::from(response as f64 <= *bound);
        }
    }
}

/// A bounded queue that drops (and counts) its oldest entry when full, so a slow reader costs
/// lost entries, never memory or a waiting request.
#[derive(Debug)]
struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T> Ring<T> {
    fn new(capacity: usize) -> Ring<T> {
        Ring {
            items: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            dropped: 0,
        }
    }

    fn push(&mut self, item: T) {
        if self.items.len() >= self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    fn drain(&mut self, max: usize) -> Vec<T> {
        let n = self.items.len().min(max);
        self.items.drain(..n).collect()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new(DEFAULT_SPAN_CAPACITY)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take telemetry (and so every request) down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Telemetry {
    pub fn new(ring_capacity: usize) -> Telemetry {
        Telemetry {
            requests: Mutex::default(),
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            tcp: Mutex::default(),
            spans: Mutex::new(Ring::new(ring_capacity)),
            spans_on: AtomicBool::new(true),
            access: Mutex::new(Ring::new(ring_capacity)),
        }
    }

    /// One finished request's duration, counted in its key's slot, which is returned for the
    /// request's sizes. The key is copied only the first time it is seen; a later request with
    /// it is a comparison (the same key as this thread's last) or one lookup, and allocates
    /// nothing.
    pub fn record_request(&self, key: &RequestKey, elapsed: Duration) -> Arc<Slot> {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let slot = LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some(slot) = last.as_ref() {
                if slot.owner == self.owner && slot.key == *key {
                    return slot.clone();
                }
            }
            let mut map = lock(&self.requests);
            let slot = match map.get(key) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Arc::new(Slot::new(self.owner, key.clone()));
                    map.insert(key.clone(), slot.clone());
                    slot
                }
            };
            *last = Some(slot.clone());
            slot
        });
        {
            let stats = &mut lock(&slot.counts).0;
            stats.count += 1;
            stats.sum_ms += ms;
            for (bound, n) in BUCKETS_MS.iter().zip(stats.buckets.iter_mut()) {
                *n += u64::from(ms <= *bound);
            }
        }
        slot
    }

    pub fn record_tcp(&self, key: TcpKey, update: impl FnOnce(&mut TcpStats)) {
        update(lock(&self.tcp).entry(key).or_default());
    }

    pub fn record_span(&self, span: Span) {
        if self.records_spans() {
            lock(&self.spans).push(span);
        }
    }

    /// Whether finished spans are kept for a reader to drain (on by default).
    pub fn records_spans(&self) -> bool {
        self.spans_on.load(Ordering::Relaxed)
    }

    /// Turns span recording on or off; turning it off also empties the ring, so the spans
    /// already kept are freed rather than held for a reader that will not come.
    pub fn record_spans(&self, on: bool) {
        self.spans_on.store(on, Ordering::Relaxed);
        if !on {
            let mut ring = lock(&self.spans);
            ring.items.clear();
            ring.items.shrink_to_fit();
        }
    }

    /// Queues an access log entry; when the agent falls behind, the oldest entries are dropped
    /// (and counted) rather than letting memory grow or a request wait.
    pub fn log_access(&self, entry: AccessLog) {
        lock(&self.access).push(entry);
    }

    pub fn drain_access_log(&self, max: usize) -> Vec<AccessLog> {
        lock(&self.access).drain(max)
    }

    /// Every counter as JSON (cumulative since start).
    pub fn snapshot_json(&self) -> String {
        let requests = lock(&self.requests);
        let (mut counted, mut sized) = (Vec::new(), Vec::new());
        for (key, slot) in requests.iter() {
            let counts = lock(&slot.counts);
            counted.push((key, counts.0.clone()));
            // A key whose bodies have not ended yet has no sizes to report.
            if counts.1.count > 0 {
                sized.push((key, counts.1.clone()));
            }
        }
        let tcp = lock(&self.tcp);
        let dropped = lock(&self.spans).dropped;
        let access_dropped = lock(&self.access).dropped;
        let snap = Snapshot {
            requests: counted,
            sizes: sized,
            tcp: tcp.iter().collect(),
            spans_dropped: dropped,
            access_logs_dropped: access_dropped,
        };
        serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into())
    }

    /// Takes up to `max` finished spans, oldest first.
    pub fn drain_spans(&self, max: usize) -> Vec<Span> {
        lock(&self.spans).drain(max)
    }
}

pub fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// W3C trace context: the trace this request belongs to and the span that called it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub parent_span_id: Option<String>,
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` header (version 00); invalid values start a new trace.
    pub fn from_traceparent(value: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, parent, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if *version != "00" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
            return None;
        }
        if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext {
            trace_id: trace.to_ascii_lowercase(),
            parent_span_id: Some(parent.to_ascii_lowercase()),
            sampled: flags & 1 == 1,
        })
    }

    pub fn new_root(sampling_percent: f64) -> TraceContext {
        use rand::Rng;
        let mut rng = rand::rng();
        TraceContext {
            trace_id: hex_id(rng.random::<u128>() | 1, 32),
            parent_span_id: None,
            sampled: rng.random_range(0.0..100.0) < sampling_percent,
        }
    }

    pub fn traceparent(&self, span_id: &str) -> String {
        // Written on every request: pieces pushed into one allocation, not `format!`.
        let mut out = String::with_capacity(3 + self.trace_id.len() + 1 + span_id.len() + 3);
        out.push_str("00-");
        out.push_str(&self.trace_id);
        out.push('-');
        out.push_str(span_id);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }
}

pub fn new_span_id() -> String {
    use rand::Rng;
    hex_id(u128::from(rand::rng().random::<u64>() | 1), 16)
}

/// The low `digits` hex digits of `value`, lower case and zero-padded, as W3C trace context
/// writes IDs. Two IDs are made on every request, and `format!`'s machinery costs several
/// times this loop.
fn hex_id(value: u128, digits: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let digits = digits.min(out.len());
    for (i, d) in out[..digits].iter_mut().rev().enumerate() {
        *d = HEX[((value >> (4 * i)) & 0xf) as usize];
    }
    // Only ASCII hex digits were written, so this never falls back.
    std::str::from_utf8(&out[..digits])
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_log_line_spells_its_shared_strings_out() {
        let entry = AccessLog {
            start_unix_ms: 1,
            direction: "inbound",
            source: Arc::from("spiffe://t/ns/a/sa/web"),
            destination: HostPort(Arc::from("b/api"), 8080),
            method: http::Method::from_bytes(b"PURGE").unwrap(),
            path: "/x?y=1".into(),
            status: 200,
            duration_ms: 0.5,
            decided_by: Arc::from("allow-web"),
            trace_id: "ab".into(),
            revision: Arc::from("main@sha256:1"),
            response_flags: "",
            tcp: None,
        };
        let json: serde_json::Value = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["source"], "spiffe://t/ns/a/sa/web");
        assert_eq!(json["destination"], "b/api:8080");
        assert_eq!(json["method"], "PURGE");
        assert_eq!(json["decided_by"], "allow-web");
        assert_eq!(json["revision"], "main@sha256:1");
        assert!(json.get("tcp").is_none());
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let t = Telemetry::default();
        let key = RequestKey {
            direction: "inbound",
            source: "s".into(),
            destination: "d".into(),
            port: 80,
            code: 200,
            policy: "p".into(),
            protocol: "http",
            grpc_status: None,
            response_flags: "",
        };
        let first = t.record_request(&key, Duration::from_micros(1500));
        let second = t.record_request(&key, Duration::from_millis(30));
        assert!(Arc::ptr_eq(&first, &second), "one slot per key");
        let s = &lock(&second.counts).0;
        assert_eq!(s.count, 2);
        assert_eq!(&s.buckets[..6], &[0, 1, 1, 1, 1, 2]);
    }

    #[test]
    fn each_key_and_each_telemetry_counts_in_its_own_slot() {
        let key = |code| RequestKey {
            direction: "inbound",
            source: "s".into(),
            destination: "d".into(),
            port: 80,
            code,
            policy: "p".into(),
            protocol: "http",
            grpc_status: None,
            response_flags: "",
        };
        let (t, other) = (Telemetry::default(), Telemetry::default());
        // Alternating keys, and another Telemetry between two requests with the same key,
        // so this thread's last slot is wrong each time it is checked.
        for code in [200, 503, 200, 200, 503] {
            t.record_request(&key(code), Duration::from_millis(1));
            other.record_request(&key(200), Duration::from_millis(1));
        }
        let count = |t: &Telemetry, code| {
            let map = lock(&t.requests);
            map.get(&key(code)).map_or(0, |s| lock(&s.counts).0.count)
        };
        assert_eq!((count(&t, 200), count(&t, 503)), (3, 2));
        assert_eq!((count(&other, 200), count(&other, 503)), (5, 0));
        assert!(t.snapshot_json().contains("\"code\":503"));
    }

    #[test]
    fn size_buckets_are_cumulative_and_inclusive() {
        let t = Telemetry::default();
        let key = RequestKey {
            direction: "outbound",
            source: "s".into(),
            destination: "d".into(),
            port: 80,
            code: 200,
            policy: "p".into(),
            protocol: "http",
            grpc_status: None,
            response_flags: "",
        };
        let slot = t.record_request(&key, Duration::from_millis(1));
        slot.record_sizes(10_000, 0);
        slot.record_sizes(10_001, 5);
        let s = &lock(&slot.counts).1;
        assert_eq!((s.count, s.request_sum, s.response_sum), (2, 20_001, 5));
        // le=1e4 holds exactly 10,000 bytes, not 10,001
        assert_eq!(s.request_buckets, [0, 0, 0, 0, 1, 2, 2, 2]);
        assert_eq!(s.response_buckets, [1, 2, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn the_span_ring_keeps_the_newest_and_counts_drops() {
        let t = Telemetry::new(2);
        for i in 0..3 {
            t.record_span(Span {
                trace_id: "t".into(),
                span_id: i.to_string(),
                parent_span_id: None,
                name: "n".into(),
                start_unix_nano: 0,
                end_unix_nano: 0,
                attributes: vec![],
            });
        }
        let spans = t.drain_spans(10);
        assert_eq!(
            spans.iter().map(|s| s.span_id.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert!(t.snapshot_json().contains("\"spans_dropped\":1"));
    }

    #[test]
    fn spans_are_not_kept_while_recording_is_off() {
        let t = Telemetry::new(8);
        let span = |id: &str| Span {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: None,
            name: "n".into(),
            start_unix_nano: 0,
            end_unix_nano: 0,
            attributes: vec![],
        };
        t.record_span(span("kept-then-freed"));
        t.record_spans(false);
        assert!(!t.records_spans());
        t.record_span(span("never-kept"));
        assert!(t.drain_spans(10).is_empty());
        t.record_spans(true);
        t.record_span(span("kept"));
        let ids: Vec<_> = t.drain_spans(10).into_iter().map(|s| s.span_id).collect();
        assert_eq!(ids, ["kept"]);
        assert!(t.snapshot_json().contains("\"spans_dropped\":0"));
    }

    #[test]
    fn ids_are_lower_hex_padded_to_their_width() {
        assert_eq!(hex_id(0xabc, 16), "0000000000000abc");
        assert_eq!(hex_id(u128::MAX, 32), "f".repeat(32));
        assert_eq!(hex_id(0x1_0000_0000_0000_0001, 16), "0000000000000001");
        let id = new_span_id();
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let root = TraceContext::new_root(100.0);
        assert_eq!(root.trace_id.len(), 32);
        assert_eq!(
            format!("{:032x}", u128::from_str_radix(&root.trace_id, 16).unwrap()),
            root.trace_id
        );
    }

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_traceparent(tp).unwrap();
        assert!(ctx.sampled);
        assert_eq!(ctx.traceparent("00f067aa0ba902b7"), tp);
        assert_eq!(
            TraceContext::from_traceparent("00-0000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            TraceContext::from_traceparent(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            ),
            None
        );
    }
}
