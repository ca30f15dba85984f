//! Every tunable of the data plane in one place, each with the reason for its value, as ztunnel
//! gathers its settings: timeouts, back-offs, buffer limits and ring sizes. None of them is in
//! ProxyConfig: they are properties of this build of the sidecar, not of a mesh's intent, so a
//! change here is reviewed (and benchmarked) like code.

use std::time::Duration;

// ---- runtime

/// Worker threads of the proxy's own runtime: one, like a sidecar should be (the app owns the
/// pod's CPU). `fastpath-proxy --workers` overrides it for benchmarks.
pub const DEFAULT_WORKERS: usize = 1;

/// How often DNS endpoint names (ExternalService-style clusters) are resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

/// How long a request waits, at least, before looking up a DNS cluster that has no endpoints
/// again after a lookup found none: a name that does not resolve must not turn every request
/// into a DNS query.
pub const DNS_ON_DEMAND_RETRY: Duration = Duration::from_secs(1);

/// How long an accept loop pauses after accept() fails (out of descriptors), instead of
/// spinning on the error.
pub const ACCEPT_BACK_OFF: Duration = Duration::from_millis(50);

// ---- connections

/// The bound on a TCP connect to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on a TLS handshake with an upstream (a peer sidecar or an external host). A peer
/// that accepts TCP but never answers the ClientHello would otherwise hold a request, and
/// a pooled connection slot, for as long as the route's timeout (or forever without one).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = CONNECT_TIMEOUT;

/// The bound on an inbound client's TLS handshake: a client that opens a connection and sends
/// nothing must not hold a task and a descriptor forever.
pub const INBOUND_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a captured connection to an unmapped destination may stay silent before it is
/// refused. Clients of HTTP send at once; a server-first protocol to an unknown destination
/// would wait forever otherwise.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

// ---- passive health

/// How long an endpoint that failed to connect is skipped; doubles per consecutive failure...
pub const EJECT_BASE: Duration = Duration::from_millis(500);
/// ...up to this.
pub const EJECT_MAX: Duration = Duration::from_secs(30);

// ---- retries

/// Bodies up to this size are buffered so a retry can send them again; larger bodies stream
/// through untouched and are sent once (a 100 MB upload must not grow memory).
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Retry back-off with full jitter: this base, doubling per retry... (Envoy's defaults)
pub const RETRY_BACK_OFF_BASE: Duration = Duration::from_millis(25);
/// ...capped here.
pub const RETRY_BACK_OFF_MAX: Duration = Duration::from_millis(250);

// ---- telemetry and config

/// Spans and access-log entries kept for the agent to drain; a slow agent loses the oldest.
pub const DEFAULT_SPAN_CAPACITY: usize = 4096;

/// Compiled-program budget for one route regex. Large enough for any realistic route match,
/// small enough that a hostile pattern cannot make each sidecar allocate megabytes per route.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

// ---- resilience

/// Mirrored copies in flight per route before new ones are dropped (and counted): a slow
/// mirror then costs lost copies, never memory or latency on the primary path.
pub const MIRROR_MAX_IN_FLIGHT: usize = 64;

/// The largest request body a mirrored copy carries; the same bound as a replayable body,
/// since the mirror copies what dispatch buffered anyway.
pub const MIRROR_MAX_BODY: u64 = MAX_REPLAY_BODY;

/// How long a copy may take, when its route sets no timeout, before it is abandoned and its
/// slot freed.
pub const MIRROR_COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// Peak-EWMA's decay, Linkerd's default: a slow answer's weight halves in about 7 s.
pub const EWMA_TAU: Duration = Duration::from_secs(10);

/// The latency a new endpoint is assumed to have before its first answer: about a mesh hop
/// with a cold connection, so a new endpoint is tried but not flooded (Linkerd assumes 1 s, a
/// cautious figure for its wider use).
pub const EWMA_INITIAL_RTT: Duration = Duration::from_millis(30);

/// The Maglev table size: prime, and far larger than any endpoint count, so each endpoint's
/// share is within a fraction of a percent of 1/n (Envoy's default).
pub const MAGLEV_TABLE_SIZE: usize = 65_537;
