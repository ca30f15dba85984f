"""A workload's outbound side: the hosts it may call, how each is routed, and the clusters behind.

Only destinations the source may reach appear (like Istio's Sidecar scoping, but derived from
policy, not written by hand): a sidecar cannot route where policy says it may never go, and its
config stays small in a large mesh.
"""

from __future__ import annotations

from reconciler.compiler import egress as egress_gateway
from reconciler.compiler import proxyconfig as pc
from reconciler.compiler.policy import Edge, Selection, denied
from reconciler.compiler.retries import policy as retry_policy
from reconciler.intent import Intent, model


def discovery_name(service: model.Service, subset: str | None = None) -> str:
    """Name of the headless Service whose DNS records list the pods of a service (or subset)."""
    middle = f"-{subset}" if subset else ""
    return f"{service.metadata.name}{middle}-weft"


def cluster_name(service: model.Service, port: model.ServicePort, subset: str | None = None) -> str:
    return f"{service.ref}:{port.port}" + (f"/{subset}" if subset else "")


def cluster(
    mesh: Intent, service: model.Service, port: model.ServicePort, subset: str | None
) -> pc.Cluster:
    ns = service.metadata.namespace
    # Breaking and ejection act on HTTP answers; validation warns that tcp ports go without.
    http = port.is_http
    return pc.Cluster(
        name=cluster_name(service, port, subset),
        service=service.ref,
        subset=subset,
        spiffe_id=mesh.identity_of(service),
        protocol=port.protocol,
        load_balancer=service.spec.load_balancer,
        endpoints=pc.Endpoints(
            dns=f"{discovery_name(service, subset)}.{ns}.svc.{mesh.spec.cluster_domain}",
            port=port.app_port,
        ),
        circuit_breaker=_breaker(service.spec.circuit_breaker) if http else None,
        outlier_detection=_outliers(service.spec.outlier_detection) if http else None,
    )


def _breaker(b: model.CircuitBreaker | None) -> pc.CircuitBreaker | None:
    if b is None:
        return None
    return pc.CircuitBreaker(
        max_connections=b.max_connections,
        max_pending_requests=b.max_pending_requests,
        max_requests=b.max_requests,
        max_retries=b.max_retries,
    )


def _outliers(o: model.OutlierDetection | None) -> pc.OutlierDetection | None:
    if o is None:
        return None
    return pc.OutlierDetection(
        consecutive_5xx=o.consecutive_5xx or None,
        consecutive_gateway_errors=o.consecutive_gateway_errors or None,
        consecutive_connect_failures=o.consecutive_connect_failures or None,
        interval_ms=o.interval,
        base_ejection_time_ms=o.base_ejection_time,
        max_ejection_time_ms=o.max_ejection_time,
        max_ejection_percent=o.max_ejection_percent,
        panic_threshold_percent=o.min_health_percent,
    )


def _string_match(m: model.StringMatch | None) -> pc.StringMatch | None:
    return None if m is None else pc.StringMatch(exact=m.exact, prefix=m.prefix, regex=m.regex)


def _headers(headers: list[model.HeaderMatch]) -> list[pc.HeaderMatch]:
    return [
        pc.HeaderMatch(
            name=h.name.lower(), exact=h.exact, prefix=h.prefix, regex=h.regex, present=h.present
        )
        for h in headers
    ]


def _match(m: model.RouteMatch) -> pc.RouteMatch:
    return pc.RouteMatch(path=_string_match(m.path), headers=_headers(m.headers), method=m.method)


def _hash(h: model.ConsistentHash | None) -> pc.ConsistentHash | None:
    if h is None:
        return None
    return pc.ConsistentHash(
        header=h.header.lower() if h.header else None,
        cookie=None if h.cookie is None else pc.HashCookie(name=h.cookie.name, ttl_ms=h.cookie.ttl),
        source_ip=h.source_ip,
    )


def _fault(f: model.Fault | None) -> pc.FaultPolicy | None:
    if f is None:
        return None
    return pc.FaultPolicy(
        delay=None
        if f.delay is None
        else pc.FaultDelay(fixed_ms=f.delay.fixed, percent=f.delay.percent),
        abort=None
        if f.abort is None
        else pc.FaultAbort(
            http_status=f.abort.http_status,
            grpc_status=f.abort.grpc_status,
            percent=f.abort.percent,
        ),
        headers=_headers(f.headers),
    )


Target = tuple[model.Service, model.ServicePort, str | None]  # a cluster to make
Compiled = tuple[list[pc.HttpRoute], list[Target]]


def http_routes(
    mesh: Intent, route: model.Route | None, service: model.Service, port: model.ServicePort
) -> tuple[list[pc.HttpRoute], list[Target]]:
    """The routes of one host and port, and the clusters they send to (backends and mirrors)."""
    routes: list[pc.HttpRoute] = []
    mirrors: list[Target] = []
    if route is not None:
        for i, r in enumerate(route.spec.rules):
            mirror = None
            if r.mirror is not None:
                target, target_port = mesh.mirror_target(route, r.mirror, port)
                assert target is not None  # validated
                assert target_port is not None
                mirrors.append((target, target_port, r.mirror.subset))
                mirror = pc.MirrorPolicy(
                    cluster=cluster_name(target, target_port, r.mirror.subset),
                    percent=r.mirror.percent,
                )
            routes.append(
                pc.HttpRoute(
                    name=f"{route.ref}#{i}",
                    # an empty match ({}) matches every request, and so does the whole rule
                    matches=[]
                    if model.RouteMatch() in r.matches
                    else [_match(m) for m in r.matches],
                    backends=[
                        pc.WeightedCluster(
                            cluster=cluster_name(service, port, b.subset),
                            weight=100 if b.weight is None else b.weight,
                        )
                        for b in r.backends
                    ],
                    timeout_ms=r.timeout,
                    retries=retry_policy(r.retries),
                    mirror=mirror,
                    fault=_fault(r.fault),
                    consistent_hash=_hash(r.consistent_hash),
                )
            )
    if not any(not r.matches for r in routes):
        routes.append(
            pc.HttpRoute(
                name="default",
                matches=[],
                backends=[pc.WeightedCluster(cluster=cluster_name(service, port), weight=100)],
            )
        )
    subsets: set[str | None] = {None} if routes[-1].name == "default" else set()
    for rule in route.spec.rules if route else ():
        subsets.update(b.subset for b in rule.backends)
    targets: list[Target] = [(service, port, s) for s in sorted(subsets, key=lambda s: s or "")]
    return routes, targets + mirrors


class RouteTable:
    """Which Route governs each (service, port), and whom each ExternalService admits; built
    once per compile."""

    def __init__(self, mesh: Intent) -> None:
        self.mesh = mesh
        self.externals = [
            (ext, mesh.peers(ext.spec.allowed_from, ext.metadata.namespace))
            for ext in mesh.externals
        ]
        self.by_port: dict[tuple[tuple[str, str], int], model.Route] = {}
        for route in mesh.routes:
            if route.spec.gateways:
                continue  # a gateway's Route: see `gateway`
            svc = mesh.resolve_host(route.spec.host, route.metadata.namespace)
            if svc is not None:
                for port in mesh.route_ports(route, svc):
                    self.by_port.setdefault((svc.key, port.port), route)

        # Every caller of a host gets the same routes: build them once, share the (immutable)
        # objects across ProxyConfigs.
        self.compiled: dict[tuple[tuple[str, str], int], Compiled] = {}

    def get(self, service: model.Service, port: model.ServicePort) -> model.Route | None:
        return self.by_port.get((service.key, port.port))

    def routes(
        self, service: model.Service, port: model.ServicePort
    ) -> tuple[list[pc.HttpRoute], list[Target]]:
        key = (service.key, port.port)
        if key not in self.compiled:
            self.compiled[key] = http_routes(self.mesh, self.get(service, port), service, port)
        return self.compiled[key]


def gateway(mesh: Intent, gw: model.Gateway) -> pc.Outbound:
    """A gateway's outbound side: each Route bound to it, on each listener serving one of the
    Route's hostnames. Only what the Routes name: a gateway reaches nothing else."""
    hosts: list[pc.HttpHost] = []
    clusters: dict[str, pc.Cluster] = {}
    for route in mesh.routes:
        ns = route.metadata.namespace
        if not any(mesh.gateway(ref, ns) is gw for ref in route.spec.gateways):
            continue
        svc = mesh.resolve_host(route.spec.host, ns)
        ports = mesh.route_ports(route, svc) if svc is not None else []
        if svc is None or not ports:
            continue
        port = ports[0]
        routes, targets = http_routes(mesh, route, svc, port)
        for listener in gw.spec.listeners:
            if listener.redirect is not None:
                continue  # it answers every request with a redirect: no route runs there
            names = [
                h for h in route.spec.hostnames if any(model.covers(lh, h) for lh in listener.hosts)
            ]
            if names:
                hosts.append(
                    pc.HttpHost(service=svc.ref, hostnames=names, port=listener.port, routes=routes)
                )
        for target, target_port, subset in targets:
            name = cluster_name(target, target_port, subset)
            clusters.setdefault(name, cluster(mesh, target, target_port, subset))
    return pc.Outbound(
        http=hosts, tcp=[], egress=[], clusters=[clusters[k] for k in sorted(clusters)]
    )


def _hostnames(mesh: Intent, source: model.Service, dest: model.Service) -> list[str]:
    names = mesh.hostnames(dest)
    return list(names if dest.metadata.namespace == source.metadata.namespace else names[1:])


def build(
    mesh: Intent,
    table: RouteTable,
    source: model.Service,
    edges: list[Edge],
    selection: Selection,
) -> pc.Outbound:
    hosts: list[pc.HttpHost] = []
    tcp: list[pc.TcpUpstream] = []
    clusters: dict[str, pc.Cluster] = {}
    for edge in edges:
        dest, port = edge.dest, edge.port
        if port.is_http:
            routes, targets = table.routes(dest, port)
            hosts.append(
                pc.HttpHost(
                    service=dest.ref,
                    hostnames=_hostnames(mesh, source, dest),
                    port=port.port,
                    routes=routes,
                )
            )
            for svc, svc_port, subset in targets:
                name = cluster_name(svc, svc_port, subset)
                clusters.setdefault(name, cluster(mesh, svc, svc_port, subset))
        else:
            name = cluster_name(dest, port)
            tcp.append(pc.TcpUpstream(service=dest.ref, port=port.port, cluster=name))
            clusters.setdefault(name, cluster(mesh, dest, port, None))
    egress = []
    spiffe, ns = mesh.identity_of(source), source.metadata.namespace
    for ext, peers in table.externals:
        if peers.admits(spiffe, ns):
            if (gw := egress_gateway.gateway_of(mesh, ext)) is not None:
                via, behind = egress_gateway.via_gateway(mesh, ext, gw)
                hosts += via
                clusters.update((c.name, c) for c in behind)
            else:
                egress += egress_gateway.destinations(ext)
    egress.sort(key=lambda e: (e.host, e.port))
    refused = [
        pc.DeniedHost(
            service=e.dest.ref,
            hostnames=_hostnames(mesh, source, e.dest),
            port=e.port.port,
            decided_by=list(e.verdict.policies),
        )
        for e in denied(selection, source)
        if e.port.is_http
    ]
    return pc.Outbound(
        http=hosts,
        tcp=tcp,
        egress=egress,
        clusters=[clusters[k] for k in sorted(clusters)],
        denied=refused,
        default_policy=selection.default_deny if mesh.spec.default_policy == "deny" else "",
    )
