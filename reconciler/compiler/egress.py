"""Egress gateways: an ExternalService that names `egressGateway` is reached through that
Gateway, never directly.

A caller's sidecar gets no egress destination for such a host (so it cannot leave on its own):
the host is a mesh HTTP host whose one cluster is the gateway, over mesh mTLS that must present
the gateway's SPIFFE identity. The gateway gets, per port, an inbound mesh port that admits
exactly the ExternalService's `allowedFrom`, handing each request to its own outbound side,
where the ExternalService is an egress destination that originates TLS to the outside.
"""

from __future__ import annotations

from reconciler.compiler import proxyconfig as pc
from reconciler.compiler.retries import policy as retry_policy
from reconciler.intent import Intent, model


def gateway_of(mesh: Intent, ext: model.ExternalService) -> model.Gateway | None:
    ref = ext.spec.egress_gateway
    return None if ref is None else mesh.gateway(ref, ext.metadata.namespace)


def destinations(ext: model.ExternalService) -> list[pc.EgressDestination]:
    """The ExternalService's ports as egress destinations, TLS originated where it says, with
    each HTTP port's timeout and retries."""
    return [
        pc.EgressDestination(
            name=ext.ref,
            host=ext.spec.host,
            port=p.port,
            protocol=p.protocol,
            tls_origination=None
            if p.tls_origination is None
            else pc.TlsOrigination(
                port=p.tls_origination.port, sni=p.tls_origination.sni or ext.spec.host
            ),
            timeout_ms=p.timeout,
            retries=retry_policy(p.retries),
            addresses=list(ext.spec.addresses) or None,
        )
        for p in ext.spec.ports
    ]


def cluster_name(gw: model.Gateway, port: int) -> str:
    return f"{gw.ref}:{port}"


def service_name(gw: model.Gateway) -> str:
    """The name callers' clusters address the gateway by (`<name>.<ns>.svc.<clusterDomain>`)."""
    return f"{gw.metadata.name}-weft"


def port_name(port: int) -> str:
    """The name of the gateway's mesh-facing port for an ExternalService port: its inbound
    port in the ProxyConfig, and on Kubernetes its container port, which the gateway's Service
    and NetworkPolicy name (fits a container port name's 15 characters)."""
    return f"egress-{port}"


def connect_ports(ext: model.ExternalService) -> list[int]:
    """The ports the gateway opens connections to outside: where TLS is originated, or the
    ExternalService's port itself."""
    return sorted({p.tls_origination.port if p.tls_origination else p.port for p in ext.spec.ports})


def callers(mesh: Intent, ext: model.ExternalService) -> set[tuple[str, str]]:
    """The mesh services an ExternalService's `allowedFrom` admits."""
    peers = mesh.peers(ext.spec.allowed_from, ext.metadata.namespace)
    return {
        s.key
        for s in mesh.services.values()
        if peers.admits(mesh.identity_of(s), s.metadata.namespace)
    }


def via_gateway(
    mesh: Intent, ext: model.ExternalService, gw: model.Gateway
) -> tuple[list[pc.HttpHost], list[pc.Cluster]]:
    """A caller's side: the external host routed to the gateway over mesh mTLS."""
    hosts, clusters = [], []
    for p in ext.spec.ports:
        name = cluster_name(gw, p.port)
        hosts.append(
            pc.HttpHost(
                service=ext.ref,
                hostnames=[ext.spec.host],
                port=p.port,
                routes=[
                    pc.HttpRoute(
                        name=f"egress-gateway:{gw.ref}",
                        matches=[],
                        backends=[pc.WeightedCluster(cluster=name, weight=100)],
                    )
                ],
            )
        )
        clusters.append(
            pc.Cluster(
                name=name,
                service=gw.ref,
                spiffe_id=mesh.identity_of(gw),
                protocol="http",
                load_balancer="LEAST_REQUEST",
                endpoints=pc.Endpoints(
                    dns=f"{service_name(gw)}.{gw.metadata.namespace}.svc."
                    f"{mesh.spec.cluster_domain}",
                    port=p.port,
                ),
            )
        )
    return hosts, clusters


def leaving_through(mesh: Intent, gw: model.Gateway) -> list[model.ExternalService]:
    return [ext for ext in mesh.externals if gateway_of(mesh, ext) is gw]


def gateway_inbound(mesh: Intent, gw: model.Gateway) -> list[pc.InboundPort]:
    """The gateway's mesh-facing ports: one per ExternalService port leaving through it (validate
    refuses two on one port), admitting only what its `allowedFrom` admits."""
    ports = []
    for ext in leaving_through(mesh, gw):
        peers = mesh.peers(ext.spec.allowed_from, ext.metadata.namespace)
        for p in ext.spec.ports:
            ports.append(
                pc.InboundPort(
                    name=port_name(p.port),
                    port=p.port,
                    target_port=p.port,  # the gateway's own outbound side, bound by the runtime
                    protocol="http",
                    rules=[
                        pc.AuthzRule(
                            policy=f"ExternalService {ext.ref}",
                            action="ALLOW",
                            peers=pc.PeerMatch(
                                identities=sorted(peers.identities),
                                namespaces=sorted(peers.namespaces),
                                any_identity=peers.any_identity,
                            ),
                        )
                    ],
                    default_action="DENY",
                    default_policy=f"Gateway {gw.ref}: only the allowedFrom of {ext.ref}",
                )
            )
    return sorted(ports, key=lambda p: p.port)


def gateway_destinations(mesh: Intent, gw: model.Gateway) -> list[pc.EgressDestination]:
    found = [d for ext in leaving_through(mesh, gw) for d in destinations(ext)]
    return sorted(found, key=lambda e: (e.host, e.port))


def confined(mesh: Intent) -> list[model.Service]:
    """Services whose calls outside the mesh all leave through egress gateways: their pods
    need not reach beyond the cluster, so a NetworkPolicy can make the gateway the only way
    out. A service also admitted to an ExternalService it calls directly is left open (its
    destinations outside have no addresses the policy could name); validate warns of it."""
    through: set[tuple[str, str]] = set()
    direct: set[tuple[str, str]] = set()
    for ext in mesh.externals:
        (through if gateway_of(mesh, ext) is not None else direct).update(callers(mesh, ext))
    return [mesh.services[key] for key in sorted(through - direct)]
