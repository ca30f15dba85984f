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

from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

SCHEMA_VERSION: Literal["weft.dev/proxyconfig/v1"] = "weft.dev/proxyconfig/v1"


class Contract(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Workload(Contract):
    namespace: str
    service: str
    service_account: str
    spiffe_id: str


class PeerMatch(Contract):
    """A rule's callers: the peer certificate's SPIFFE ID, or the namespace it names, or any."""

    identities: list[str] = []
    namespaces: list[str] = []
    any_identity: bool = False


class PathPattern(Contract):
    exact: str | None = None
    prefix: str | None = None


class AuthzRule(Contract):
    """Deny rules come first; the first matching deny decides, else any matching allow."""

    policy: str
    action: Literal["ALLOW", "DENY"]
    peers: PeerMatch
    methods: list[str] = []
    paths: list[PathPattern] = []


class InboundPort(Contract):
    name: str
    port: int
    target_port: int
    protocol: Literal["http", "http2", "grpc", "tcp"]
    rules: list[AuthzRule]
    default_action: Literal["ALLOW", "DENY"]
    default_policy: str


class StringMatch(Contract):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


class HeaderMatch(Contract):
    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None


class RouteMatch(Contract):
    path: StringMatch | None = None
    headers: list[HeaderMatch] = []
    method: str | None = None


class WeightedCluster(Contract):
    cluster: str
    weight: int


class RetryBudget(Contract):
    percent: float
    min_retries_per_second: int


class RetryPolicy(Contract):
    attempts: int
    per_try_timeout_ms: int | None = None
    retry_on: list[str]
    budget: RetryBudget | None = None


class HttpRoute(Contract):
    name: str
    matches: list[RouteMatch]  # empty: matches every request
    backends: list[WeightedCluster]
    timeout_ms: int | None = None
    retries: RetryPolicy | None = None


class HttpHost(Contract):
    """HTTP to one service port, chosen by Host header (or absolute-form URI) and port."""

    service: str
    hostnames: list[str]
    port: int
    routes: list[HttpRoute]


class TcpUpstream(Contract):
    """Opaque TCP to one service port, chosen by bind port or original destination."""

    service: str
    port: int
    cluster: str


class Endpoints(Contract):
    dns: str | None = None
    static: list[str] | None = None  # "host:port"; filled in by the local runtime
    port: int


class Cluster(Contract):
    name: str
    service: str
    subset: str | None = None
    spiffe_id: str  # the upstream must present exactly this identity
    protocol: Literal["http", "http2", "grpc", "tcp"]
    load_balancer: Literal["ROUND_ROBIN", "LEAST_REQUEST"]
    endpoints: Endpoints


class TlsOrigination(Contract):
    port: int
    sni: str


class EgressDestination(Contract):
    name: str
    host: str
    port: int
    protocol: Literal["tcp", "tls", "http"]
    tls_origination: TlsOrigination | None = None


class Outbound(Contract):
    http: list[HttpHost]
    tcp: list[TcpUpstream]
    egress: list[EgressDestination]
    clusters: list[Cluster]


class Telemetry(Contract):
    sampling_percent: float
    otlp_endpoint: str | None = None


class ProxyConfig(Contract):
    schema_version: Literal["weft.dev/proxyconfig/v1"]
    revision: str
    trust_domain: str
    mtls: Literal["STRICT", "PERMISSIVE"]
    workload: Workload
    inbound: list[InboundPort]
    outbound: Outbound
    telemetry: Telemetry

    def to_json(self) -> str:
        # Unset optional fields are left out rather than written as null: the contract treats
        # absent and null alike, and the files stay readable.
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True) + "\n"
