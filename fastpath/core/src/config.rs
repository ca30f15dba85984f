//! `ProxyConfig`, the contract between control plane and data plane (see docs/proxyconfig.md).
//!
//! Mirrors `reconciler/compiler/proxyconfig.py` field for field. Unknown fields and unknown
//! schema versions are refused: a sidecar that guessed at a config it does not understand could
//! let through traffic the intent forbids.

use serde::Deserialize;

pub use crate::path::EscapedSlashes;

pub const SCHEMA_VERSION: &str = "weft.dev/proxyconfig/v1";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid ProxyConfig JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported schemaVersion {found:?}; this fastpath reads {SCHEMA_VERSION:?}")]
    Version { found: String },
    #[error("route {route:?} sends to unknown cluster {cluster:?}")]
    UnknownCluster { route: String, cluster: String },
    #[error("route {route:?}: invalid regex: {reason}")]
    Regex { route: String, reason: String },
    #[error("route {route:?}: backend weights sum to zero")]
    NoWeight { route: String },
    #[error("gateway listener {listener:?}: certificate: {reason}")]
    GatewayCertificate { listener: String, reason: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    pub schema_version: String,
    pub revision: String,
    pub trust_domain: String,
    pub mtls: MtlsMode,
    pub workload: Workload,
    pub inbound: Vec<InboundPort>,
    pub outbound: Outbound,
    pub telemetry: Telemetry,
    /// How request paths are normalized before authorization and routing (`path.rs`).
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// Ingress listeners, for a gateway workload; absent for a sidecar.
    #[serde(default)]
    pub gateway: Vec<GatewayListener>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathNormalization {
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum MtlsMode {
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub namespace: String,
    pub service: String,
    pub service_account: String,
    pub spiffe_id: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMatch {
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub any_identity: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathPattern {
    pub exact: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    pub policy: String,
    pub action: Action,
    pub peers: PeerMatch,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<PathPattern>,
    /// End-user conditions (verified JWT principal and claims); absent: none.
    pub principal: Option<crate::jwt::PrincipalMatch>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
    pub rules: Vec<AuthzRule>,
    pub default_action: Action,
    pub default_policy: String,
    /// End-user authentication (JWT) for this port; absent: none.
    pub authentication: Option<crate::jwt::Authentication>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    pub path: Option<StringMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_retries_per_second: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout_ms: Option<u64>,
    pub retry_on: Vec<String>,
    pub budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    pub name: String,
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<WeightedCluster>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<RetryPolicy>,
    /// Copies of a share of this route's requests, sent to another cluster and forgotten.
    pub mirror: Option<MirrorPolicy>,
    /// Delays or aborts injected into a share of this route's requests.
    pub fault: Option<FaultPolicy>,
    /// Keeps requests with the same key on the same endpoint (Maglev).
    pub consistent_hash: Option<ConsistentHash>,
}

/// Exactly one key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    pub header: Option<String>,
    pub cookie: Option<HashCookie>,
    pub source_ip: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorPolicy {
    pub cluster: String,
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_ms: u64,
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status a plain HTTP caller gets.
    pub http_status: Option<u16>,
    /// The gRPC status a gRPC caller gets (HTTP 200, trailers-only); else mapped from
    /// `httpStatus` as for any reply the sidecar makes itself.
    pub grpc_status: Option<u16>,
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultPolicy {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// Only requests matching every one of these are faulted; empty: every request.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHost {
    pub service: String,
    pub hostnames: Vec<String>,
    pub port: u16,
    pub routes: Vec<HttpRoute>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpUpstream {
    pub service: String,
    pub port: u16,
    pub cluster: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    pub dns: Option<String>,
    pub r#static: Option<Vec<String>>,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum LoadBalancer {
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    #[serde(rename = "LEAST_REQUEST")]
    LeastRequest,
    /// Linkerd's peak-EWMA: the cheaper of two random endpoints by latency × load.
    #[serde(rename = "PEAK_EWMA")]
    PeakEwma,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    pub service: String,
    pub subset: Option<String>,
    pub spiffe_id: String,
    pub protocol: Protocol,
    pub load_balancer: LoadBalancer,
    pub endpoints: Endpoints,
    /// Limits on what this sidecar sends the cluster; overflow is answered 503 (`UO`) at once.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Passive health: endpoints that keep failing are ejected for a while.
    pub outlier_detection: Option<OutlierDetection>,
}

/// Each limit is optional: unset means unlimited.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and resets, timeouts, connect failures) that eject an endpoint.
    #[serde(rename = "consecutive5xx")]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 (and connect failures, resets, timeouts).
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive failures to connect (TCP or TLS).
    pub consecutive_connect_failures: Option<u32>,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_time_ms: u64,
    pub max_ejection_percent: f64,
    /// Below this share of healthy endpoints, ejections are ignored and all are used.
    pub panic_threshold_percent: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsOrigination {
    pub port: u16,
    pub sni: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EgressProtocol {
    Tcp,
    Tls,
    Http,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDestination {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub protocol: EgressProtocol,
    pub tls_origination: Option<TlsOrigination>,
    /// HTTP only: the whole request's deadline, retries included, as a mesh route's.
    pub timeout_ms: Option<u64>,
    /// HTTP only: retries as a mesh route's (`retry.rs` decides what is retryable).
    pub retries: Option<RetryPolicy>,
    /// The host's IP addresses, connected to instead of resolving `host` (which stays the
    /// name in `Host`, SNI and the certificate check). Empty: `host` is resolved.
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
}

impl EgressDestination {
    /// The one route HTTP to this destination takes: no matches, its own upstream as the only
    /// backend (`egress:host:port`, see `Active::upstream`), with the port's timeout and
    /// retries, so dispatch treats it exactly as a mesh route.
    pub fn route(&self) -> HttpRoute {
        HttpRoute {
            name: format!("egress:{}", self.name),
            matches: vec![],
            backends: vec![WeightedCluster {
                cluster: format!("egress:{}:{}", self.host, self.port),
                weight: 100,
            }],
            timeout_ms: self.timeout_ms,
            retries: self.retries.clone(),
            mirror: None,
            fault: None,
            consistent_hash: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    pub http: Vec<HttpHost>,
    pub tcp: Vec<TcpUpstream>,
    pub egress: Vec<EgressDestination>,
    pub clusters: Vec<Cluster>,
    /// HTTP service ports a deny policy refuses this workload, and which policy: no route,
    /// only what the caller-side 403 names.
    #[serde(default)]
    pub denied: Vec<DeniedHost>,
    /// What left every other host without a route: the Mesh default when it is deny; empty
    /// when it is allow, as then only hosts outside the mesh have none.
    #[serde(default)]
    pub default_policy: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeniedHost {
    pub service: String,
    pub hostnames: Vec<String>,
    pub port: u16,
    pub decided_by: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    pub sampling_percent: f64,
    pub otlp_endpoint: Option<String>,
    /// Istio's metric labels of this workload and its peers: read by the agent, which renders
    /// the metrics; parsed here only so a malformed entry is refused like any other field.
    #[serde(default)]
    pub peers: Vec<PeerLabels>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerLabels {
    pub service: String,
    pub spiffe_id: String,
    pub host: String,
    pub workload: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

/// One listener of a gateway: HTTPS (TLS terminated with its certificates, optionally asking
/// clients for a certificate) or plain HTTP (routed, or answered with a redirect to HTTPS).
/// Certificates, keys and client CAs are files on the gateway's host (never in git or in the
/// config): read when the config is loaded, so a missing or broken file refuses the config and
/// the last good certificate keeps serving.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListener {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Served in this order when the client's SNI matches no certificate's names: the first
    /// is the default.
    #[serde(default)]
    pub certificates: Vec<EdgeCertificate>,
    /// PEM CA bundle client certificates must chain to; absent: no client certificate asked.
    pub client_ca_file: Option<String>,
    /// The Kubernetes Secret the client CA was mounted from, for error messages.
    pub client_ca_secret: Option<String>,
    /// Answer every request with a redirect to HTTPS instead of routing it (HTTP only).
    pub https_redirect: Option<HttpsRedirect>,
    /// End-user tokens checked at the edge (a RequestAuthentication `to: gateways`).
    #[serde(default)]
    pub authentication: Option<crate::jwt::Authentication>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum ListenerProtocol {
    #[serde(rename = "HTTP")]
    Http,
    #[default]
    #[serde(rename = "HTTPS")]
    Https,
}

/// A certificate chain and its key, as files; `secret` names the Kubernetes Secret they were
/// mounted from, for error messages.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeCertificate {
    pub certificate_file: String,
    pub key_file: String,
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpsRedirect {
    /// The HTTPS port the Location names; 443 is left out of it.
    pub port: u16,
    /// 301 or 308 (308 keeps the method and body).
    pub status_code: u16,
}

impl ProxyConfig {
    /// Parses and checks a config: version, JSON shape, and references between its parts.
    pub fn parse(json: &str) -> Result<ProxyConfig, ConfigError> {
        // Read the version first, so a future config fails with "unsupported version" rather
        // than with whichever new field happens to come first.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Versioned {
            schema_version: String,
        }
        let v: Versioned = serde_json::from_str(json)?;
        if v.schema_version != SCHEMA_VERSION {
            return Err(ConfigError::Version {
                found: v.schema_version,
            });
        }
        let config: ProxyConfig = serde_json::from_str(json)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let known: std::collections::HashSet<&str> = self
            .outbound
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for host in &self.outbound.http {
            for route in &host.routes {
                if route.backends.iter().map(|b| b.weight).sum::<u32>() == 0 {
                    return Err(ConfigError::NoWeight {
                        route: route.name.clone(),
                    });
                }
                let mirror = route.mirror.as_ref().map(|m| &m.cluster);
                for cluster in route.backends.iter().map(|b| &b.cluster).chain(mirror) {
                    if !known.contains(cluster.as_str()) {
                        return Err(ConfigError::UnknownCluster {
                            route: route.name.clone(),
                            cluster: cluster.clone(),
                        });
                    }
                }
            }
        }
        for t in &self.outbound.tcp {
            if !known.contains(t.cluster.as_str()) {
                return Err(ConfigError::UnknownCluster {
                    route: format!("tcp {}:{}", t.service, t.port),
                    cluster: t.cluster.clone(),
                });
            }
        }
        Ok(())
    }
}
