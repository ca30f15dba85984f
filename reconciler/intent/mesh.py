"""`Intent`: one revision's documents, indexed, with the lookups both validator and compiler use.

Resolving a reference (a service named `api` from namespace `b`, a Route host, a policy source)
happens here and only here, so what the validator accepts is exactly what the compiler resolves.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterable

from reconciler.intent import model

# A source resolved to what a sidecar can check on a verified peer certificate.
ANY_NAMESPACE = "*"


@dataclasses.dataclass(frozen=True, slots=True)
class Peers:
    """Callers a rule admits: exact SPIFFE IDs, whole namespaces, or any mesh identity."""

    identities: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    any_identity: bool = False

    def admits(self, spiffe_id: str, namespace: str) -> bool:
        return self.any_identity or spiffe_id in self.identities or namespace in self.namespaces

    def __or__(self, other: Peers) -> Peers:
        return Peers(
            self.identities | other.identities,
            self.namespaces | other.namespaces,
            self.any_identity or other.any_identity,
        )


@dataclasses.dataclass(frozen=True)
class Intent:
    revision: str
    mesh: model.Mesh
    services: dict[tuple[str, str], model.Service]
    policies: tuple[model.AccessPolicy, ...]
    routes: tuple[model.Route, ...]
    externals: tuple[model.ExternalService, ...]
    authentications: tuple[model.RequestAuthentication, ...] = ()
    gateways: dict[tuple[str, str], model.Gateway] = dataclasses.field(default_factory=dict)

    @property
    def spec(self) -> model.MeshSpec:
        return self.mesh.spec

    # Indexes, computed once: validation and compilation ask these per policy and per service,
    # and a scan each time made a 2,000-service mesh quadratic.
    @functools.cached_property
    def namespaces(self) -> frozenset[str]:
        return frozenset(ns for ns, _ in self.services)

    @functools.cached_property
    def by_namespace(self) -> dict[str, list[model.Service]]:
        index: dict[str, list[model.Service]] = collections.defaultdict(list)
        for (ns, _), svc in self.services.items():
            index[ns].append(svc)
        return dict(index)

    @functools.cached_property
    def identities(self) -> frozenset[str]:
        return frozenset(self.identity_of(s) for s in self.services.values()) | frozenset(
            self.identity_of(g) for g in self.gateways.values()
        )

    @functools.cached_property
    def by_identity(self) -> dict[str, list[model.Service]]:
        index: dict[str, list[model.Service]] = collections.defaultdict(list)
        for svc in self.services.values():
            index[self.identity_of(svc)].append(svc)
        return dict(index)

    def admitted(self, peers: Peers) -> list[model.Service]:
        """The mesh services whose identity a `Peers` admits, without scanning every service."""
        if peers.any_identity:
            return list(self.services.values())
        found = {s.key: s for ns in peers.namespaces for s in self.by_namespace.get(ns, ())}
        for spiffe in peers.identities:
            found.update((s.key, s) for s in self.by_identity.get(spiffe, ()))
        return list(found.values())

    def spiffe_id(self, namespace: str, service_account: str) -> str:
        return f"spiffe://{self.spec.trust_domain}/ns/{namespace}/sa/{service_account}"

    def identity_of(self, service: model.Service | model.Gateway) -> str:
        return self.spiffe_id(service.metadata.namespace, service.service_account)

    def gateway(self, ref: str, namespace: str) -> model.Gateway | None:
        """`name` (in `namespace`) or `namespace/name`."""
        ns, _, name = ref.rpartition("/")
        return self.gateways.get((ns or namespace, name))

    def service(self, ref: str, namespace: str) -> model.Service | None:
        """`name` (in `namespace`) or `namespace/name`."""
        ns, _, name = ref.rpartition("/")
        return self.services.get((ns or namespace, name))

    def services_in(self, namespace: str) -> list[model.Service]:
        return self.by_namespace.get(namespace, [])

    def hostnames(self, service: model.Service) -> tuple[str, ...]:
        """Every name a caller may use for a service, shortest first (Kubernetes DNS forms)."""
        name, ns = service.metadata.name, service.metadata.namespace
        return (
            name,
            f"{name}.{ns}",
            f"{name}.{ns}.svc",
            f"{name}.{ns}.svc.{self.spec.cluster_domain}",
        )

    def resolve_host(self, host: str, namespace: str) -> model.Service | None:
        """The service a Route host names, from a document in `namespace`."""
        parts = host.split(".")
        if len(parts) == 1:
            return self.services.get((namespace, host))
        candidate = self.services.get((parts[1], parts[0]))
        if candidate is not None and host in self.hostnames(candidate):
            return candidate
        return None

    def peers(self, sources: Iterable[model.Source], namespace: str) -> Peers:
        """What a `from` / `allowedFrom` list admits, resolved against this revision's services."""
        result = Peers()
        for source in sources:
            if source.namespaces:
                names = frozenset(source.namespaces)
                result |= Peers(
                    namespaces=names - {ANY_NAMESPACE}, any_identity=ANY_NAMESPACE in names
                )
            for ref in source.services or ():
                svc = self.service(ref, namespace)
                if svc is not None:
                    result |= Peers(identities=frozenset({self.identity_of(svc)}))
            if source.identities:
                result |= Peers(identities=frozenset(source.identities))
            for ref in source.gateways or ():
                gw = self.gateway(ref, namespace)
                if gw is not None:
                    result |= Peers(identities=frozenset({self.identity_of(gw)}))
        return result

    def targets(
        self, policy: model.AccessPolicy | model.RequestAuthentication
    ) -> list[tuple[model.Service, model.ServicePort]]:
        """The (service, port) pairs an AccessPolicy (or RequestAuthentication) governs."""
        ns = policy.metadata.namespace
        if isinstance(policy.spec.to, model.AuthenticationTarget) and policy.spec.to.gateways:
            return []  # it governs gateways: `gateway_authentication`
        names = policy.spec.to.services
        chosen = (
            self.services_in(ns)
            if names is None
            else [s for n in names if (s := self.services.get((ns, n))) is not None]
        )
        pairs = []
        for svc in chosen:
            for port in svc.spec.ports:
                refs = policy.spec.to.ports
                if refs is None or any(r in (port.name, port.port) for r in refs):
                    pairs.append((svc, port))
        return pairs

    def route_ports(self, route: model.Route, service: model.Service) -> list[model.ServicePort]:
        """The HTTP ports of `service` a Route applies to: one named port, or all HTTP ports."""
        if route.spec.port is not None:
            port = service.port(route.spec.port)
            return [port] if port is not None and port.is_http else []
        return [p for p in service.spec.ports if p.is_http]

    def mirror_target(
        self, route: model.Route, mirror: model.Mirror, routed: model.ServicePort
    ) -> tuple[model.Service | None, model.ServicePort | None]:
        """Where a rule's mirror sends copies of requests to `routed`: the service (the route's
        host unless it names another) and its port (the one named, else the same port of the
        same service, else the other service's port of the same name, then number)."""
        ns = route.metadata.namespace
        host = self.resolve_host(route.spec.host, ns)
        target = host if mirror.service is None else self.service(mirror.service, ns)
        if target is None:
            return None, None
        if mirror.port is not None:
            return target, target.port(mirror.port)
        if target is host:
            return target, routed
        return target, target.port(routed.name) or target.port(routed.port)

    def gateway_authentication(self, gw: model.Gateway) -> model.RequestAuthentication | None:
        """The RequestAuthentication naming `gw` in `to.gateways`; validation allows one."""
        for ra in self.authentications:
            ns = ra.metadata.namespace
            if any(self.gateway(ref, ns) is gw for ref in ra.spec.to.gateways or ()):
                return ra
        return None

    @functools.cached_property
    def authentication(self) -> dict[tuple[tuple[str, str], str], model.RequestAuthentication]:
        """The RequestAuthentication of each HTTP (service key, port name); validation makes
        sure no port has two."""
        index: dict[tuple[tuple[str, str], str], model.RequestAuthentication] = {}
        for ra in self.authentications:
            for svc, port in self.targets(ra):
                if port.is_http:
                    index.setdefault((svc.key, port.name), ra)
        return index
