"""`ProxyConfig`: the contract between control plane and data plane, one per workload.

The compiler writes it, fastpath parses it (refusing unknown fields and unknown versions), and
`docs/proxyconfig.md` documents it. It holds everything a sidecar enforces and nothing it must
not see: no private keys, no policy for other workloads. Durations are integer milliseconds so
no parser has to agree on a duration syntax.

Addresses are logical: inbound ports are service ports, cluster endpoints are DNS names of
discovery Services. A target binds them to real sockets (the local runtime rewrites endpoints to
loopback addresses; Kubernetes uses them as they are).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

SCHEMA_VERSION: Literal["weft.dev/proxyconfig/v1"] = "weft.dev/proxyconfig/v1"


# Plain frozen dataclasses: the compiler builds thousands of these from data it already
# validated, so they are not validated again on construction (mypy checks the types). One
# pydantic TypeAdapter serialises them and derives the JSON Schema.
CONFIG = ConfigDict(alias_generator=to_camel, extra="forbid")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    __pydantic_config__ = CONFIG

    namespace: str
    service: str
    service_account: str
    spiffe_id: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PeerMatch:
    """A rule's callers: the peer certificate's SPIFFE ID, or the namespace it names, or any."""

    __pydantic_config__ = CONFIG

    identities: list[str] = dataclasses.field(default_factory=list)
    namespaces: list[str] = dataclasses.field(default_factory=list)
    any_identity: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PathPattern:
    __pydantic_config__ = CONFIG

    exact: str | None = None
    prefix: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClaimMatch:
    """A claim (a path into nested objects) that must hold one of `values`."""

    __pydantic_config__ = CONFIG

    path: list[str]
    values: list[str]
    space_separated: bool = False  # a string claim read as words (OAuth `scope`)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalMatch:
    """A rule's end-user conditions, on the token the port's authentication verified."""

    __pydantic_config__ = CONFIG

    principals: list[str] = dataclasses.field(default_factory=list)
    claims: list[ClaimMatch] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuthzRule:
    """Deny rules come first; the first matching deny decides, else any matching allow."""

    __pydantic_config__ = CONFIG

    policy: str
    action: Literal["ALLOW", "DENY"]
    peers: PeerMatch
    methods: list[str] = dataclasses.field(default_factory=list)
    paths: list[PathPattern] = dataclasses.field(default_factory=list)
    principal: PrincipalMatch | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenHeader:
    __pydantic_config__ = CONFIG

    name: str
    prefix: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClaimHeader:
    __pydantic_config__ = CONFIG

    claim: str
    header: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JwtIssuer:
    """An accepted issuer. `jwks` holds its keys: inline from the intent, or filled in by the
    sidecar agent from `jwksUri` / `jwksFile` (fastpath itself never fetches)."""

    __pydantic_config__ = CONFIG

    issuer: str
    audiences: list[str] = dataclasses.field(default_factory=list)
    jwks_uri: str | None = None
    jwks_file: str | None = None
    jwks: dict[str, Any] | None = None
    from_headers: list[TokenHeader] = dataclasses.field(default_factory=list)
    from_params: list[str] = dataclasses.field(default_factory=list)
    from_cookies: list[str] = dataclasses.field(default_factory=list)
    forward_claims: list[ClaimHeader] = dataclasses.field(default_factory=list)
    forward_token: bool = False
    leeway_seconds: int = 60


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Authentication:
    """A port's end-user authentication (a RequestAuthentication lowered for it)."""

    __pydantic_config__ = CONFIG

    policy: str
    required: bool
    issuers: list[JwtIssuer]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InboundPort:
    __pydantic_config__ = CONFIG

    name: str
    port: int
    target_port: int
    protocol: Literal["http", "http2", "grpc", "tcp"]
    rules: list[AuthzRule]
    default_action: Literal["ALLOW", "DENY"]
    default_policy: str
    authentication: Authentication | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    __pydantic_config__ = CONFIG

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HeaderMatch:
    __pydantic_config__ = CONFIG

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    __pydantic_config__ = CONFIG

    path: StringMatch | None = None
    headers: list[HeaderMatch] = dataclasses.field(default_factory=list)
    method: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WeightedCluster:
    __pydantic_config__ = CONFIG

    cluster: str
    weight: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    __pydantic_config__ = CONFIG

    percent: float
    min_retries_per_second: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    __pydantic_config__ = CONFIG

    attempts: int
    per_try_timeout_ms: int | None = None
    retry_on: list[str]
    budget: RetryBudget | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MirrorPolicy:
    """Fire-and-forget copies of `percent` of the route's requests to `cluster`."""

    __pydantic_config__ = CONFIG

    cluster: str
    percent: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FaultDelay:
    __pydantic_config__ = CONFIG

    fixed_ms: int
    percent: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FaultAbort:
    __pydantic_config__ = CONFIG

    http_status: int | None = None
    grpc_status: int | None = None
    percent: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FaultPolicy:
    __pydantic_config__ = CONFIG

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: list[HeaderMatch] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HashCookie:
    __pydantic_config__ = CONFIG

    name: str
    ttl_ms: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConsistentHash:
    """Exactly one key: a header (lowercased), a cookie, or the caller's address."""

    __pydantic_config__ = CONFIG

    header: str | None = None
    cookie: HashCookie | None = None
    source_ip: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HttpRoute:
    __pydantic_config__ = CONFIG

    name: str
    matches: list[RouteMatch]  # empty: matches every request
    backends: list[WeightedCluster]
    timeout_ms: int | None = None
    retries: RetryPolicy | None = None
    mirror: MirrorPolicy | None = None
    fault: FaultPolicy | None = None
    consistent_hash: ConsistentHash | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HttpHost:
    """HTTP to one service port, chosen by Host header (or absolute-form URI) and port."""

    __pydantic_config__ = CONFIG

    service: str
    hostnames: list[str]
    port: int
    routes: list[HttpRoute]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TcpUpstream:
    """Opaque TCP to one service port, chosen by bind port or original destination."""

    __pydantic_config__ = CONFIG

    service: str
    port: int
    cluster: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    __pydantic_config__ = CONFIG

    dns: str | None = None
    static: list[str] | None = None  # "host:port"; filled in by the local runtime
    port: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """Per-sidecar bounds on what is outstanding to the cluster; unset is unlimited."""

    __pydantic_config__ = CONFIG

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    __pydantic_config__ = CONFIG

    consecutive_5xx: Annotated[int | None, Field(alias="consecutive5xx")] = None
    consecutive_gateway_errors: int | None = None
    consecutive_connect_failures: int | None = None
    interval_ms: int
    base_ejection_time_ms: int
    max_ejection_time_ms: int
    max_ejection_percent: float
    panic_threshold_percent: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    __pydantic_config__ = CONFIG

    name: str
    service: str
    subset: str | None = None
    spiffe_id: str  # the upstream must present exactly this identity
    protocol: Literal["http", "http2", "grpc", "tcp"]
    load_balancer: Literal["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA"]
    endpoints: Endpoints
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsOrigination:
    __pydantic_config__ = CONFIG

    port: int
    sni: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EgressDestination:
    __pydantic_config__ = CONFIG

    name: str
    host: str
    port: int
    protocol: Literal["tcp", "tls", "http"]
    tls_origination: TlsOrigination | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeniedHost:
    """An HTTP service port a deny policy refuses this workload: no route, only the name of
    what decided, so the caller-side 403 says which policy to look at."""

    __pydantic_config__ = CONFIG

    service: str
    hostnames: list[str]
    port: int
    decided_by: list[str]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Outbound:
    __pydantic_config__ = CONFIG

    http: list[HttpHost]
    tcp: list[TcpUpstream]
    egress: list[EgressDestination]
    clusters: list[Cluster]
    denied: list[DeniedHost] = dataclasses.field(default_factory=list)
    # What left every other host without a route: the Mesh default when it is deny, as inbound
    # ports name it; empty when it is allow (then only hosts outside the mesh have none).
    default_policy: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PeerLabels:
    """What Istio's standard metric labels say of one workload, as Istio would fill them from
    its pod: so `istio_requests_total` carries values Istio's dashboards and Kiali expect."""

    __pydantic_config__ = CONFIG

    service: str  # "ns/name"
    spiffe_id: str
    host: str  # the service's FQDN: Istio's destination_service
    workload: str
    app: str
    version: str
    canonical_service: str
    canonical_revision: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry:
    __pydantic_config__ = CONFIG

    sampling_percent: float
    otlp_endpoint: str | None = None
    # This workload first, then every workload it may call or be called by (the metric labels
    # of a request name both ends); the sidecar's Rust side only carries them through.
    peers: list[PeerLabels] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PathNormalization:
    """How the sidecar normalizes request paths before authorization and routing."""

    __pydantic_config__ = CONFIG

    escaped_slashes: Literal["REJECT", "KEEP", "DECODE"] = "REJECT"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GatewayListener:
    """An ingress gateway's HTTPS listener; the certificate and key are files on its host."""

    __pydantic_config__ = CONFIG

    name: str
    port: int
    certificate_file: str
    key_file: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    __pydantic_config__ = CONFIG

    schema_version: Literal["weft.dev/proxyconfig/v1"]
    revision: str
    trust_domain: str
    mtls: Literal["STRICT", "PERMISSIVE"]
    workload: Workload
    inbound: list[InboundPort]
    outbound: Outbound
    telemetry: Telemetry
    path_normalization: PathNormalization = PathNormalization()
    gateway: list[GatewayListener] | None = None  # a gateway's listeners; absent for sidecars

    def to_json(self) -> str:
        # Unset optional fields are left out rather than written as null: the contract treats
        # absent and null alike, and the files stay readable.
        text = ADAPTER.dump_json(self, by_alias=True, indent=2, exclude_none=True)
        return text.decode() + "\n"

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = ADAPTER.dump_python(
            self, mode="json", by_alias=True, exclude_none=True
        )
        return data


ADAPTER: TypeAdapter[ProxyConfig] = TypeAdapter(ProxyConfig)
