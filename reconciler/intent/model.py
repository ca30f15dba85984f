"""The mesh intent as typed, immutable data: one class per kind and per nested object.

This module is the single source of truth for what a Weft document may contain: the loader
validates YAML against it, `schema/intent.schema.json` is generated from it, and
`docs/intent.md` documents it field by field. Fields are camelCase in YAML (Kubernetes style);
unknown fields are refused, and scalars are not coerced ("8080" is not a port).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_VERSION = "weft.dev/v1alpha1"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# An optional DNS-name prefix and "/", then a name of up to 63 characters (Kubernetes rules).
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
HEADER_NAME = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
SPIFFE_ID = r"^spiffe://[a-z0-9._-]+/ns/[a-z0-9-]+/sa/[a-z0-9.-]+$"
# A service referred to as `name` (same namespace as the referring document) or `namespace/name`.
SERVICE_REF = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Name = Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)]
# Kubernetes Service names (and so Weft Service and subset names) must start with a letter.
ServiceName = Annotated[
    str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63)
]
# Kubernetes port names: at most 15 characters, at least one letter (IANA service names).
PortName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=15)
]
DnsName = Annotated[str, StringConstraints(pattern=DNS_NAME, max_length=253)]
# A host a gateway answers: a DNS name, or `*.` and one (every name under it, not itself).
HostName = Annotated[str, StringConstraints(pattern=r"^(\*\.)?" + DNS_NAME[1:], max_length=253)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
PortRef = PortNumber | Name  # a port by number or by its name on the service
LabelMap = dict[
    Annotated[str, StringConstraints(pattern=LABEL_KEY, max_length=317)],
    Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)],
]
ServiceRef = Annotated[str, StringConstraints(pattern=SERVICE_REF)]


def _ip_literal(value: str) -> str:
    """An IPv4 or IPv6 address, written the canonical way (so equal addresses compare equal)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


IpAddress = Annotated[
    str,
    AfterValidator(_ip_literal),
    WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]
SpiffeId = Annotated[str, StringConstraints(pattern=SPIFFE_ID)]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration(value: Any) -> int:
    """A Go-style duration ("250ms", "2s", "1h30m") in whole milliseconds, always > 0."""
    if not isinstance(value, str):
        raise ValueError(
            f"a duration is a string with a unit, like '500ms' or '2s' (got {value!r})"
        )
    if not re.fullmatch(DURATION, value):
        raise ValueError(
            f"{value!r} is not a duration; write it like '500ms', '2s', '1m' or '1h30m'"
        )
    ms = sum(float(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(value))
    if ms < 1 or ms != int(ms):
        raise ValueError(f"{value!r} must be a whole number of milliseconds, at least 1ms")
    return int(ms)


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION, "examples": ["500ms", "2s", "24h"]}),
]


def _path_pattern(value: str) -> str:
    if not value.startswith("/") or "*" in value[:-1]:
        raise ValueError(
            f"{value!r} is not a path pattern: write an exact path ('/healthz') "
            "or a prefix ending in '*' ('/api/*')"
        )
    return value


PathPattern = Annotated[str, AfterValidator(_path_pattern)]


class Model(BaseModel):
    """Base of every intent object: camelCase fields, nothing unknown, no coercion, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=False,
    )


def exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    """Refuse an object that sets none or several of mutually exclusive fields."""
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(to_camel(f) for f in fields)
        setting = ", ".join(to_camel(f) for f in given) or "none"
        raise ValueError(f"{what} takes exactly one of {names} (got {setting})")


# ---------------------------------------------------------------- documents


class Sourced(Model):
    """A top-level document; remembers where it was read from, for diagnostics only."""

    _source: Any = PrivateAttr(default=None)


class ClusterMetadata(Model):
    name: Name


class Metadata(Model):
    name: Name
    namespace: Name


class Document(Sourced):
    """A namespaced document."""

    api_version: Literal["weft.dev/v1alpha1"]
    metadata: Metadata

    @property
    def key(self) -> tuple[str, str]:
        return (self.metadata.namespace, self.metadata.name)

    @property
    def ref(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"


# ---------------------------------------------------------------- Mesh


class Telemetry(Model):
    sampling_percent: Annotated[float, Field(ge=0, le=100)] = 1.0
    otlp_endpoint: (
        Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+(:[0-9]+)?/?$")] | None
    ) = None


class PathNormalization(Model):
    """How sidecars treat `%2F`, `%5C` and `\\` in request paths (docs/intent.md, "Paths")."""

    escaped_slashes: Literal["reject", "keep", "decode"] = "reject"


class MeshSpec(Model):
    trust_domain: DnsName = "cluster.local"
    mtls: Literal["STRICT", "PERMISSIVE"] = "STRICT"
    default_policy: Literal["deny", "allow"] = "deny"
    certificate_lifetime: Duration = 24 * 3_600_000
    cluster_domain: DnsName = "cluster.local"
    telemetry: Telemetry = Telemetry()
    path_normalization: PathNormalization = PathNormalization()

    @model_validator(mode="after")
    def _lifetime_bounds(self) -> MeshSpec:
        if not 3_600_000 <= self.certificate_lifetime <= 90 * 24 * 3_600_000:
            raise ValueError("certificateLifetime must be between 1h and 2160h (90 days)")
        return self


class Mesh(Sourced):
    api_version: Literal["weft.dev/v1alpha1"]
    kind: Literal["Mesh"]
    metadata: ClusterMetadata
    spec: MeshSpec = MeshSpec()


# ---------------------------------------------------------------- Service

Protocol = Literal["http", "http2", "grpc", "tcp"]


def _has_letter(value: str) -> str:
    if not any(c.isalpha() for c in value):
        raise ValueError(f"port name {value!r} needs at least one letter")
    return value


class ServicePort(Model):
    name: Annotated[PortName, AfterValidator(_has_letter)]
    port: PortNumber
    target_port: PortNumber | None = None
    protocol: Protocol = "http"

    @property
    def app_port(self) -> int:
        return self.target_port or self.port

    @property
    def is_http(self) -> bool:
        return self.protocol != "tcp"


class Workload(Model):
    kind: Literal["Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job"] = "Deployment"
    name: Name | None = None
    pod_selector: Annotated[LabelMap, Field(min_length=1)] | None = None


class Subset(Model):
    name: ServiceName
    labels: Annotated[LabelMap, Field(min_length=1)]


class LocalRun(Model):
    command: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {}


Limit = Annotated[int, Field(ge=1, le=1_000_000)]


class CircuitBreaker(Model):
    """Bounds on what each caller's sidecar has outstanding to this service; unset is unlimited.
    A request over a bound is answered 503 at once, with response flag `UO`."""

    max_connections: Limit | None = None
    max_pending_requests: Limit | None = None
    max_requests: Limit | None = None
    max_retries: Limit | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> CircuitBreaker:
        if not self.model_fields_set:
            raise ValueError("circuitBreaker needs at least one limit; leave it out for none")
        return self


Count = Annotated[int, Field(ge=0, le=1000)]


class OutlierDetection(Model):
    """Ejects an endpoint that keeps failing, in each caller's sidecar (Istio's defaults)."""

    consecutive_5xx: Annotated[Count, Field(alias="consecutive5xx")] = 5
    consecutive_gateway_errors: Count | None = None
    consecutive_connect_failures: Count | None = None
    interval: Duration = 10_000
    base_ejection_time: Duration = 30_000
    max_ejection_time: Duration = 300_000
    max_ejection_percent: Annotated[float, Field(ge=0, le=100)] = 10.0
    min_health_percent: Annotated[float, Field(ge=0, le=100)] = 0.0

    @model_validator(mode="after")
    def _bounds(self) -> OutlierDetection:
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError("maxEjectionTime must not be shorter than baseEjectionTime")
        return self


class ServiceSpec(Model):
    service_account: Name | None = None
    ports: Annotated[list[ServicePort], Field(min_length=1)]
    workload: Workload = Workload()
    subsets: list[Subset] = []
    load_balancer: Literal["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA"] = "LEAST_REQUEST"
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    local: LocalRun | None = None


class ServiceMetadata(Metadata):
    name: ServiceName


class Service(Document):
    kind: Literal["Service"]
    metadata: ServiceMetadata
    spec: ServiceSpec

    @property
    def service_account(self) -> str:
        return self.spec.service_account or self.metadata.name

    @property
    def workload_name(self) -> str:
        return self.spec.workload.name or self.metadata.name

    @property
    def pod_selector(self) -> dict[str, str]:
        return dict(self.spec.workload.pod_selector or {"app": self.metadata.name})

    def port(self, ref: int | str) -> ServicePort | None:
        for p in self.spec.ports:
            if ref in (p.name, p.port):
                return p
        return None

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.spec.subsets if s.name == name), None)


# ---------------------------------------------------------------- AccessPolicy


class Source(Model):
    """One kind of caller. Entries of a `from` list are alternatives (any may match)."""

    namespaces: Annotated[list[Name | Literal["*"]], Field(min_length=1)] | None = None
    services: Annotated[list[ServiceRef], Field(min_length=1)] | None = None
    identities: Annotated[list[SpiffeId], Field(min_length=1)] | None = None
    gateways: Annotated[list[ServiceRef], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        exactly_one(self, ("namespaces", "services", "identities", "gateways"), "a source")
        return self


class PolicyTarget(Model):
    services: Annotated[list[Name], Field(min_length=1)] | None = None
    ports: Annotated[list[PortRef], Field(min_length=1)] | None = None


NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class ClaimCondition(Model):
    """A claim of the verified token that must hold one of `values` (a list claim: any element).
    `claim` is a top-level name, or a list of names into nested objects."""

    claim: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1)]
    values: Annotated[list[NonEmpty], Field(min_length=1)]

    @property
    def path(self) -> list[str]:
        return [self.claim] if isinstance(self.claim, str) else list(self.claim)


class Conditions(Model):
    methods: Annotated[list[HttpMethod], Field(min_length=1)] | None = None
    paths: Annotated[list[PathPattern], Field(min_length=1)] | None = None
    # End-user conditions, on the token a RequestAuthentication verified: `iss/sub` patterns
    # ("*", "prefix*", "*suffix" or exact), claims, and OAuth scopes (the `scope` claim).
    request_principals: Annotated[list[NonEmpty], Field(min_length=1)] | None = None
    claims: Annotated[list[ClaimCondition], Field(min_length=1)] | None = None
    scopes: Annotated[list[NonEmpty], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Conditions:
        if all(getattr(self, f) is None for f in type(self).model_fields):
            raise ValueError(
                "`when` needs methods, paths, requestPrincipals, claims or scopes; "
                "leave it out to match every request"
            )
        return self

    @property
    def on_end_user(self) -> bool:
        """Whether these conditions read a verified token (and so need a RequestAuthentication)."""
        return bool(self.request_principals or self.claims or self.scopes)


class AccessPolicySpec(Model):
    action: Literal["allow", "deny"] = "allow"
    to: PolicyTarget = PolicyTarget()
    from_: Annotated[list[Source], Field(min_length=1, alias="from")]
    when: Conditions | None = None


class AccessPolicy(Document):
    kind: Literal["AccessPolicy"]
    spec: AccessPolicySpec


# ---------------------------------------------------------------- RequestAuthentication


class TokenHeader(Model):
    name: Annotated[str, StringConstraints(pattern=HEADER_NAME)]
    prefix: str = ""


class ClaimToHeader(Model):
    claim: NonEmpty
    header: Annotated[str, StringConstraints(pattern=HEADER_NAME)]


class JwtIssuer(Model):
    """One identity provider whose tokens are accepted, and where its keys come from: at most one
    of `jwksUri`, `jwks`, `jwksFile`; none of them means OIDC discovery from the issuer URL."""

    issuer: NonEmpty
    audiences: list[NonEmpty] = []
    jwks_uri: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None
    jwks: dict[str, Any] | None = None  # an inline JWKS document: {keys: [...]}
    jwks_file: Annotated[str, StringConstraints(pattern=r"^/")] | None = None
    from_headers: list[TokenHeader] = []  # none given: `Authorization: Bearer <token>`
    from_params: list[NonEmpty] = []
    from_cookies: list[NonEmpty] = []
    forward_claims: list[ClaimToHeader] = []
    forward_token: bool = False
    clock_skew: Duration = 60_000
    # Verified tokens each sidecar keeps until their `exp` (a repeated token skips the
    # signature check); 0 checks every request.
    token_cache_size: Annotated[int, Field(ge=0, le=100_000)] = 100

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuer:
        if not self.discovers:
            exactly_one(self, ("jwks_uri", "jwks", "jwks_file"), "an issuer")
        return self

    @property
    def discovers(self) -> bool:
        """No key source given: the agent finds the keys through the issuer's discovery document,
        `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0)."""
        return self.jwks_uri is None and self.jwks is None and self.jwks_file is None


class AuthenticationTarget(PolicyTarget):
    # Tokens checked at the edge, on every listener of these Gateways, instead of at services.
    gateways: Annotated[list[ServiceRef], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _gateways_alone(self) -> AuthenticationTarget:
        if self.gateways is not None and (self.services is not None or self.ports is not None):
            raise ValueError("`to` names gateways, or services and ports, not both")
        return self


class RequestAuthenticationSpec(Model):
    to: AuthenticationTarget = AuthenticationTarget()
    required: bool = True  # a request with no token is refused (401); false: it goes on anonymous
    issuers: Annotated[list[JwtIssuer], Field(min_length=1)]


class RequestAuthentication(Document):
    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec


# ---------------------------------------------------------------- Route


class StringMatch(Model):
    exact: str | None = None
    prefix: str | None = None
    regex: Annotated[str, StringConstraints(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one(self) -> StringMatch:
        exactly_one(self, ("exact", "prefix", "regex"), "a match")
        return self


class PathMatch(StringMatch):
    @model_validator(mode="after")
    def _absolute(self) -> PathMatch:
        literal = self.exact if self.exact is not None else self.prefix
        if literal is not None and not literal.startswith("/"):
            raise ValueError(f"path {literal!r} must start with '/'")
        return self


class HeaderMatch(Model):
    name: Annotated[str, StringConstraints(pattern=HEADER_NAME)]
    exact: str | None = None
    prefix: str | None = None
    regex: Annotated[str, StringConstraints(min_length=1)] | None = None
    present: Literal[True] | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        exactly_one(self, ("exact", "prefix", "regex", "present"), "a header match")
        return self


class RouteMatch(Model):
    """All given conditions must hold (AND); the entries of `matches` are alternatives (OR)."""

    path: PathMatch | None = None
    headers: list[HeaderMatch] = []
    method: HttpMethod | None = None


class Backend(Model):
    subset: Name | None = None
    weight: Annotated[int, Field(ge=0, le=100)] | None = None


RetryOn = Literal[
    "5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx"
]


class RetryBudget(Model):
    percent: Annotated[float, Field(gt=0, le=100)]
    min_retries_per_second: Annotated[int, Field(ge=0, le=10_000)] = 3


class Retries(Model):
    attempts: Annotated[int, Field(ge=0, le=10)]
    per_try_timeout: Duration | None = None
    retry_on: Annotated[list[RetryOn], Field(min_length=1)] = [
        "connect-failure",
        "refused-stream",
        "gateway-error",
    ]
    budget: RetryBudget | None = None


Percent = Annotated[float, Field(gt=0, le=100)]


class Mirror(Model):
    """Copies of a share of a rule's requests, sent to a subset of the route's host or to
    another service (or a subset of it); their answers are discarded."""

    service: ServiceRef | None = None
    subset: Name | None = None
    port: PortRef | None = None
    percent: Percent = 100.0


class FaultDelay(Model):
    fixed: Duration
    percent: Percent


class FaultAbort(Model):
    http_status: Annotated[int, Field(ge=200, le=599)] | None = None
    grpc_status: Annotated[int, Field(ge=1, le=16)] | None = None
    percent: Percent

    @model_validator(mode="after")
    def _one_status(self) -> FaultAbort:
        exactly_one(self, ("http_status", "grpc_status"), "an abort")
        return self


class Fault(Model):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: list[HeaderMatch] = []

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault needs a delay, an abort or both")
        return self


class HashCookie(Model):
    name: Annotated[str, StringConstraints(pattern=HEADER_NAME, max_length=64)]
    ttl: Duration


class ConsistentHash(Model):
    """What keeps a caller on one endpoint: a header's value, a cookie (set by the sidecar when
    absent), or the calling workload's address. Exactly one."""

    header: Annotated[str, StringConstraints(pattern=HEADER_NAME)] | None = None
    cookie: HashCookie | None = None
    source_ip: Literal[True] | None = None

    @model_validator(mode="after")
    def _one(self) -> ConsistentHash:
        exactly_one(self, ("header", "cookie", "source_ip"), "consistentHash")
        return self


class RouteRule(Model):
    matches: list[RouteMatch] = []
    backends: Annotated[list[Backend], Field(min_length=1)]
    timeout: Duration | None = None
    retries: Retries | None = None
    mirror: Mirror | None = None
    fault: Fault | None = None
    consistent_hash: ConsistentHash | None = None


class RouteSpec(Model):
    host: DnsName
    port: PortRef | None = None
    rules: Annotated[list[RouteRule], Field(min_length=1)]
    # Bound to gateways, the Route routes their clients' requests for `hostnames` to `host`,
    # and is not a mesh Route: sidecars calling `host` do not use it.
    gateways: list[ServiceRef] = []
    hostnames: list[HostName] = []

    @model_validator(mode="after")
    def _hostnames_with_gateways(self) -> RouteSpec:
        if bool(self.gateways) != bool(self.hostnames):
            raise ValueError("gateways and hostnames go together: the hosts a gateway answers")
        return self


class Route(Document):
    kind: Literal["Route"]
    spec: RouteSpec


# ---------------------------------------------------------------- ExternalService


class TlsOrigination(Model):
    port: PortNumber = 443
    sni: DnsName | None = None


class ExternalPort(Model):
    port: PortNumber
    protocol: Literal["tcp", "tls", "http"]
    tls_origination: TlsOrigination | None = None
    # As a Route rule's: the sidecar bounds and retries HTTP it forwards to the outside.
    timeout: Duration | None = None
    retries: Retries | None = None

    @model_validator(mode="after")
    def _origination_needs_http(self) -> ExternalPort:
        if self.tls_origination is not None and self.protocol != "http":
            raise ValueError(
                "tlsOrigination upgrades the app's plain HTTP to TLS; it needs protocol: http"
            )
        if (self.timeout is not None or self.retries is not None) and self.protocol != "http":
            raise ValueError(
                "timeout and retries apply to HTTP requests the sidecar forwards; "
                "they need protocol: http"
            )
        return self


class ExternalServiceSpec(Model):
    host: DnsName
    ports: Annotated[list[ExternalPort], Field(min_length=1)]
    allowed_from: list[Source] = []
    # Calls leave through this Gateway (its name, or namespace/name), never from the caller.
    egress_gateway: ServiceRef | None = None
    # The host's addresses, connected to instead of resolving it (Istio's STATIC resolution).
    addresses: list[IpAddress] = []

    @model_validator(mode="after")
    def _addresses_once(self) -> ExternalServiceSpec:
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("addresses: an address is listed twice")
        return self


class ExternalService(Document):
    kind: Literal["ExternalService"]
    spec: ExternalServiceSpec


# ---------------------------------------------------------------- Gateway


AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/")]


def _one_certificate_source(c: GatewayCertificate | GatewayTls, what: str) -> None:
    if (c.certificate_file is None) != (c.key_file is None):
        raise ValueError(f"{what}: certificateFile and keyFile go together")
    exactly_one(c, ("certificate_file", "secret"), what)


class GatewayCertificate(Model):
    """A certificate chain and key clients see: PEM files on the gateway's host, or a
    Kubernetes Secret (type kubernetes.io/tls, in the Gateway's namespace) — never in git."""

    certificate_file: AbsolutePath | None = None
    key_file: AbsolutePath | None = None
    secret: DnsName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> GatewayCertificate:
        _one_certificate_source(self, "a certificate")
        return self


class GatewayTls(Model):
    """One certificate inline, or several in `certificates` (chosen by the client's SNI, the
    first the default); `clientCaFile`/`clientCaSecret` require clients to present a
    certificate that chains to that CA (edge mTLS)."""

    certificate_file: AbsolutePath | None = None
    key_file: AbsolutePath | None = None
    secret: DnsName | None = None
    certificates: list[GatewayCertificate] = []
    client_ca_file: AbsolutePath | None = None
    client_ca_secret: DnsName | None = None

    @model_validator(mode="after")
    def _sources(self) -> GatewayTls:
        inline = self.certificate_file is not None or self.secret is not None
        if self.certificates and (inline or self.key_file is not None):
            raise ValueError("tls takes one certificate inline or a list in certificates, not both")
        if not self.certificates:
            _one_certificate_source(self, "tls")
        if self.client_ca_file is not None and self.client_ca_secret is not None:
            raise ValueError("tls takes at most one of clientCaFile, clientCaSecret")
        return self

    @property
    def all_certificates(self) -> list[GatewayCertificate]:
        if self.certificates:
            return self.certificates
        # Checked already, by `_sources`.
        inline = GatewayCertificate.model_construct(
            certificate_file=self.certificate_file, key_file=self.key_file, secret=self.secret
        )
        return [inline]


def covers(listener_host: str, name: str) -> bool:
    """Whether a listener host answers a route hostname: the same name, or a wildcard with the
    name beneath it (`*.example.com` covers `a.example.com` and `*.a.example.com`, not
    `example.com`), as Gateway API listener and route hostnames intersect."""
    return listener_host == name or (
        listener_host.startswith("*.") and name.endswith(listener_host[1:])
    )


class HttpsRedirect(Model):
    port: PortNumber = 443
    status_code: Literal[301, 308] = 301


class GatewayListener(Model):
    name: Annotated[PortName, AfterValidator(_has_letter)]
    port: PortNumber
    protocol: Literal["HTTP", "HTTPS"] = "HTTPS"
    hosts: Annotated[list[HostName], Field(min_length=1)]
    tls: GatewayTls | None = None
    # HTTP only: answer with a redirect to HTTPS (`true`: 301 to port 443) instead of routing.
    https_redirect: Literal[True] | HttpsRedirect | None = None

    @model_validator(mode="after")
    def _tls_for_https(self) -> GatewayListener:
        if self.protocol == "HTTPS" and self.tls is None:
            raise ValueError("an HTTPS listener needs tls: its certificate")
        if self.protocol == "HTTP" and self.tls is not None:
            raise ValueError("an HTTP listener takes no tls (use protocol: HTTPS)")
        if self.protocol == "HTTPS" and self.https_redirect is not None:
            raise ValueError("httpsRedirect is for an HTTP listener")
        return self

    @property
    def redirect(self) -> HttpsRedirect | None:
        return HttpsRedirect() if self.https_redirect is True else self.https_redirect


class GatewayKubernetes(Model):
    """How the Kubernetes target exposes the gateway: its Service's type, and pods."""

    service_type: Literal["LoadBalancer", "NodePort"] = "LoadBalancer"
    replicas: Annotated[int, Field(ge=1, le=100)] = 1


class GatewaySpec(Model):
    service_account: Name | None = None
    listeners: list[GatewayListener] = []  # none: an egress-only gateway
    kubernetes: GatewayKubernetes = GatewayKubernetes()


class Gateway(Document):
    kind: Literal["Gateway"]
    spec: GatewaySpec

    @property
    def service_account(self) -> str:
        return self.spec.service_account or self.metadata.name


KINDS: dict[str, type[Sourced]] = {
    "Mesh": Mesh,
    "Service": Service,
    "AccessPolicy": AccessPolicy,
    "Route": Route,
    "ExternalService": ExternalService,
    "RequestAuthentication": RequestAuthentication,
    "Gateway": Gateway,
}
