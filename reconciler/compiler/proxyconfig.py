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
from typing import Annotated, Any, Literal, TypeVar, dataclass_transform

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

SCHEMA_VERSION: Literal["weft.dev/proxyconfig/v1"] = "weft.dev/proxyconfig/v1"


# Plain frozen dataclasses: the compiler builds thousands of these from data it already
# validated, so they are not validated again on construction (mypy checks the types). One
# pydantic TypeAdapter serialises them and derives the JSON Schema.
CONFIG = ConfigDict(alias_generator=to_camel, extra="forbid")

_T = TypeVar("_T")


@dataclass_transform(
    frozen_default=True, kw_only_default=True, field_specifiers=(dataclasses.field,)
)
def contract(cls: type[_T]) -> type[_T]:
    """A part of the contract: a frozen, slotted, keyword-only dataclass that the one
    TypeAdapter serialises with camelCase names, refusing unknown fields."""
    setattr(cls, "__pydantic_config__", CONFIG)  # noqa: B010  # pydantic reads it off the class
    return dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)


@contract
class Workload:
    namespace: str
    service: str
    service_account: str
    spiffe_id: str


@contract
class PeerMatch:
    """A rule's callers: the peer certificate's SPIFFE ID, or the namespace it names, or any."""

    identities: list[str] = dataclasses.field(default_factory=list)
    namespaces: list[str] = dataclasses.field(default_factory=list)
    any_identity: bool = False


@contract
class PathPattern:
    exact: str | None = None
    prefix: str | None = None


@contract
class ClaimMatch:
    """A claim (a path into nested objects) that must hold one of `values`."""

    path: list[str]
    values: list[str]
    space_separated: bool = False  # a string claim read as words (OAuth `scope`)


@contract
class PrincipalMatch:
    """A rule's end-user conditions, on the token the port's authentication verified."""

    principals: list[str] = dataclasses.field(default_factory=list)
    claims: list[ClaimMatch] = dataclasses.field(default_factory=list)


@contract
class AuthzRule:
    """Deny rules come first; the first matching deny decides, else any matching allow."""

    policy: str
    action: Literal["ALLOW", "DENY"]
    peers: PeerMatch
    methods: list[str] = dataclasses.field(default_factory=list)
    paths: list[PathPattern] = dataclasses.field(default_factory=list)
    principal: PrincipalMatch | None = None


@contract
class TokenHeader:
    name: str
    prefix: str = ""


@contract
class ClaimHeader:
    claim: str
    header: str


@contract
class JwtIssuer:
    """An accepted issuer. `jwks` holds its keys: inline from the intent, or filled in by the
    sidecar agent from `jwksUri` / `jwksFile`, or from the `jwks_uri` of the issuer's discovery
    document when `discovery` is set (fastpath itself never fetches)."""

    issuer: str
    audiences: list[str] = dataclasses.field(default_factory=list)
    jwks_uri: str | None = None
    jwks_file: str | None = None
    discovery: bool = False
    jwks: dict[str, Any] | None = None
    from_headers: list[TokenHeader] = dataclasses.field(default_factory=list)
    from_params: list[str] = dataclasses.field(default_factory=list)
    from_cookies: list[str] = dataclasses.field(default_factory=list)
    forward_claims: list[ClaimHeader] = dataclasses.field(default_factory=list)
    forward_token: bool = False
    leeway_seconds: int = 60
    token_cache_size: int = 100


@contract
class Authentication:
    """A port's end-user authentication (a RequestAuthentication lowered for it)."""

    policy: str
    required: bool
    issuers: list[JwtIssuer]


@contract
class InboundPort:
    name: str
    port: int
    target_port: int
    protocol: Literal["http", "http2", "grpc", "tcp"]
    rules: list[AuthzRule]
    default_action: Literal["ALLOW", "DENY"]
    default_policy: str
    authentication: Authentication | None = None


@contract
class StringMatch:
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@contract
class HeaderMatch:
    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None


@contract
class RouteMatch:
    path: StringMatch | None = None
    headers: list[HeaderMatch] = dataclasses.field(default_factory=list)
    method: str | None = None


@contract
class WeightedCluster:
    cluster: str
    weight: int


@contract
class RetryBudget:
    percent: float
    min_retries_per_second: int


@contract
class RetryPolicy:
    attempts: int
    per_try_timeout_ms: int | None = None
    retry_on: list[str]
    budget: RetryBudget | None = None


@contract
class MirrorPolicy:
    """Fire-and-forget copies of `percent` of the route's requests to `cluster`."""

    cluster: str
    percent: float


@contract
class FaultDelay:
    fixed_ms: int
    percent: float


@contract
class FaultAbort:
    http_status: int | None = None
    grpc_status: int | None = None
    percent: float


@contract
class FaultPolicy:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: list[HeaderMatch] = dataclasses.field(default_factory=list)


@contract
class HashCookie:
    name: str
    ttl_ms: int


@contract
class ConsistentHash:
    """Exactly one key: a header (lowercased), a cookie, or the caller's address."""

    header: str | None = None
    cookie: HashCookie | None = None
    source_ip: bool | None = None


@contract
class HttpRoute:
    name: str
    matches: list[RouteMatch]  # empty: matches every request
    backends: list[WeightedCluster]
    timeout_ms: int | None = None
    retries: RetryPolicy | None = None
    mirror: MirrorPolicy | None = None
    fault: FaultPolicy | None = None
    consistent_hash: ConsistentHash | None = None


@contract
class HttpHost:
    """HTTP to one service port, chosen by Host header (or absolute-form URI) and port."""

    service: str
    hostnames: list[str]
    port: int
    routes: list[HttpRoute]


@contract
class TcpUpstream:
    """Opaque TCP to one service port, chosen by bind port or original destination."""

    service: str
    port: int
    cluster: str


@contract
class Endpoints:
    dns: str | None = None
    static: list[str] | None = None  # "host:port"; filled in by the local runtime
    port: int


@contract
class CircuitBreaker:
    """Per-sidecar bounds on what is outstanding to the cluster; unset is unlimited."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@contract
class OutlierDetection:
    consecutive_5xx: Annotated[int | None, Field(alias="consecutive5xx")] = None
    consecutive_gateway_errors: int | None = None
    consecutive_connect_failures: int | None = None
    interval_ms: int
    base_ejection_time_ms: int
    max_ejection_time_ms: int
    max_ejection_percent: float
    panic_threshold_percent: float


@contract
class Cluster:
    name: str
    service: str
    subset: str | None = None
    spiffe_id: str  # the upstream must present exactly this identity
    protocol: Literal["http", "http2", "grpc", "tcp"]
    load_balancer: Literal["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA"]
    endpoints: Endpoints
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None


@contract
class TlsOrigination:
    port: int
    sni: str


@contract
class EgressDestination:
    name: str
    host: str
    port: int
    protocol: Literal["tcp", "tls", "http"]
    tls_origination: TlsOrigination | None = None
    # HTTP only: the whole request's deadline and its retries, as a mesh route's.
    timeout_ms: int | None = None
    retries: RetryPolicy | None = None
    # The host's IP addresses, connected to instead of resolving it; None: resolve the host.
    addresses: list[str] | None = None


@contract
class DeniedHost:
    """An HTTP service port a deny policy refuses this workload: no route, only the name of
    what decided, so the caller-side 403 says which policy to look at."""

    service: str
    hostnames: list[str]
    port: int
    decided_by: list[str]


@contract
class Outbound:
    http: list[HttpHost]
    tcp: list[TcpUpstream]
    egress: list[EgressDestination]
    clusters: list[Cluster]
    denied: list[DeniedHost] = dataclasses.field(default_factory=list)
    # What left every other host without a route: the Mesh default when it is deny, as inbound
    # ports name it; empty when it is allow (then only hosts outside the mesh have none).
    default_policy: str = ""


@contract
class PeerLabels:
    """What Istio's standard metric labels say of one workload, as Istio would fill them from
    its pod: so `istio_requests_total` carries values Istio's dashboards and Kiali expect."""

    service: str  # "ns/name"
    spiffe_id: str
    host: str  # the service's FQDN: Istio's destination_service
    workload: str
    app: str
    version: str
    canonical_service: str
    canonical_revision: str


@contract
class Telemetry:
    sampling_percent: float
    otlp_endpoint: str | None = None
    # This workload first, then every workload it may call or be called by (the metric labels
    # of a request name both ends); the sidecar's Rust side only carries them through.
    peers: list[PeerLabels] = dataclasses.field(default_factory=list)


@contract
class PathNormalization:
    """How the sidecar normalizes request paths before authorization and routing."""

    escaped_slashes: Literal["REJECT", "KEEP", "DECODE"] = "REJECT"


# Where a target mounts the Kubernetes Secrets a Gateway names: <dir>/<secret>/tls.crt, tls.key
# and ca.crt. Part of the contract, so the compiler can name files without knowing the target.
GATEWAY_SECRETS_DIR = "/etc/weft/gateway-secrets"


@contract
class EdgeCertificate:
    """A certificate chain and key for a gateway's clients, as files on its host; `secret`
    names the Kubernetes Secret mounted there, for a target to mount and errors to name."""

    certificate_file: str
    key_file: str
    secret: str | None = None


@contract
class HttpsRedirect:
    port: int
    status_code: int


@contract
class GatewayListener:
    """An ingress gateway's listener: HTTPS with certificates chosen by SNI (and a client CA
    for edge mTLS), or plain HTTP, routed or redirected to HTTPS."""

    name: str
    port: int
    protocol: Literal["HTTP", "HTTPS"] = "HTTPS"
    certificates: list[EdgeCertificate] = dataclasses.field(default_factory=list)
    client_ca_file: str | None = None
    client_ca_secret: str | None = None
    https_redirect: HttpsRedirect | None = None
    authentication: Authentication | None = None


@contract
class ProxyConfig:
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
