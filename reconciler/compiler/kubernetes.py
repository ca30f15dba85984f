"""Kubernetes objects derived from intent: discovery Services and NetworkPolicies.

These are the compiler's output for a cluster, pure data (dicts in the shape the API takes).
NetworkPolicies are L3/L4 defence in depth derived from the same access decisions the sidecars
enforce: a pod port admits the pods of services that may reach it, so a compromised sidecar
still cannot open a connection policy forbids. When every service of a namespace may call, the
whole namespace is admitted with one selector; its unmeshed pods then pass L3, and in STRICT
mode the sidecar still refuses them for want of a certificate.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any

from reconciler.compiler import egress
from reconciler.compiler.outbound import discovery_name
from reconciler.compiler.policy import Edge
from reconciler.compiler.reach import Entry
from reconciler.intent import Intent, model

MANAGED_BY = {"app.kubernetes.io/managed-by": "weft"}
NAMESPACE_LABEL = "kubernetes.io/metadata.name"

Object = dict[str, Any]


def _labels(service: model.Service) -> dict[str, str]:
    return {**MANAGED_BY, "weft.dev/service": service.metadata.name}


def discovery_services(service: model.Service) -> list[Object]:
    """Headless Services (all pods, and one per subset) whose DNS lists pod addresses."""
    objects = []
    for subset in [None, *service.spec.subsets]:
        selector = service.pod_selector | (subset.labels if subset else {})
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": discovery_name(service, subset.name if subset else None),
                    "namespace": service.metadata.namespace,
                    "labels": _labels(service),
                },
                "spec": {
                    "clusterIP": "None",
                    "selector": dict(sorted(selector.items())),
                    "ports": [
                        {
                            "name": p.name,
                            "port": p.app_port,
                            "targetPort": p.app_port,
                            "protocol": "TCP",
                        }
                        for p in sorted(service.spec.ports, key=lambda p: p.port)
                    ],
                },
            }
        )
    return objects


GATEWAY_LABEL = "weft.dev/gateway"


def gateway_pod_labels(gateway: model.Gateway) -> dict[str, str]:
    """The labels of a Gateway's pods, which NetworkPolicies of what it reaches select."""
    return {GATEWAY_LABEL: gateway.metadata.name}


def gateway_callers(entries: list[Entry]) -> dict[str, dict[int, set[str]]]:
    """Service ref → app port → the gateways ("ns/name") whose routes its policies admit."""
    found: dict[str, dict[int, set[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(set)
    )
    for e in entries:
        if e.verdict.decision != "deny":
            found[e.destination][e.app_port].add(e.gateway)
    return found


def network_policy(
    mesh: Intent,
    service: model.Service,
    inbound: list[Edge],
    open_to_all: bool,
    gateways: dict[int, set[str]] | None = None,
) -> Object:
    """Ingress policy for one service's pods, from the edges that reach it.

    `open_to_all` is for a PERMISSIVE mesh whose default admits the service's callers: plaintext
    clients outside the mesh are admitted by the sidecar, so L3 must not block them either.
    """
    callers_by_port: dict[int, set[tuple[str, str]]] = collections.defaultdict(set)
    for edge in inbound:
        callers_by_port[edge.port.app_port].add(edge.source.key)
    by_peers: dict[tuple[Any, ...], list[int]] = collections.defaultdict(list)
    for port in sorted({p.app_port for p in service.spec.ports}):
        if open_to_all:
            by_peers[("any",)].append(port)
        elif callers_by_port.get(port):
            by_peers[tuple(sorted(callers_by_port[port]))].append(port)
    ingress = []
    for peers, ports in sorted(by_peers.items(), key=lambda kv: kv[1]):
        rule: Object = {"ports": [{"protocol": "TCP", "port": p} for p in ports]}
        if peers != ("any",):
            rule["from"] = _peer_selectors(mesh, peers)
        ingress.append(rule)
    if not open_to_all:
        # Gateways whose routes this service's policies admit: their pods, on those ports.
        for port, refs in sorted((gateways or {}).items()):
            selectors = []
            for ref in sorted(refs):
                ns, name = ref.split("/")
                selectors.append(
                    {
                        "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: ns}},
                        "podSelector": {"matchLabels": {GATEWAY_LABEL: name}},
                    }
                )
            ingress.append({"ports": [{"protocol": "TCP", "port": port}], "from": selectors})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{service.metadata.name}-weft",
            "namespace": service.metadata.namespace,
            "labels": _labels(service),
        },
        "spec": {
            "podSelector": {"matchLabels": dict(sorted(service.pod_selector.items()))},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _peer_selectors(mesh: Intent, callers: tuple[Any, ...]) -> list[Object]:
    """Pod selectors for callers; a namespace all of whose services call becomes one selector."""
    by_ns: dict[str, set[str]] = collections.defaultdict(set)
    for ns, name in callers:
        by_ns[ns].add(name)
    peers: list[Object] = []
    for ns in sorted(by_ns):
        ns_selector = {"matchLabels": {NAMESPACE_LABEL: ns}}
        if by_ns[ns] == {s.metadata.name for s in mesh.services_in(ns)}:
            peers.append({"namespaceSelector": ns_selector})
            continue
        for name in sorted(by_ns[ns]):
            labels = mesh.services[(ns, name)].pod_selector
            peers.append(
                {
                    "namespaceSelector": ns_selector,
                    "podSelector": {"matchLabels": dict(sorted(labels.items()))},
                }
            )
    return peers


def egress_within_cluster(service: model.Service) -> Object:
    """Egress policy for the pods of a service whose only way out is an egress gateway: any
    pod of the cluster (the gateway, kube-dns and every mesh peer among them), nothing beyond.
    The gateway's own pods may leave (`egress_gateway_policy`)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{service.metadata.name}-weft-egress",
            "namespace": service.metadata.namespace,
            "labels": _labels(service),
        },
        "spec": {
            "podSelector": {"matchLabels": dict(sorted(service.pod_selector.items()))},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {}}]}],
        },
    }


def _gateway_labels(gateway: model.Gateway) -> dict[str, str]:
    return {**MANAGED_BY, "weft.dev/gateway-name": gateway.metadata.name}


def _mesh_ports(mesh: Intent, gateway: model.Gateway) -> list[int]:
    return sorted({p.port for ext in egress.leaving_through(mesh, gateway) for p in ext.spec.ports})


def egress_gateway_service(mesh: Intent, gateway: model.Gateway) -> Object:
    """The ClusterIP Service callers' clusters address an egress gateway by: each
    ExternalService port, onto the gateway's container port named for it.

    A ClusterIP, not headless like a service's discovery Service: callers connect to the
    ExternalService's port (often 80) and kube-proxy maps it to the unprivileged port the
    gateway listens on, where a meshed pod's capture would map it with iptables (a gateway has
    no capture). Nothing outside the cluster reaches a ClusterIP."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": egress.service_name(gateway),
            "namespace": gateway.metadata.namespace,
            "labels": _gateway_labels(gateway),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": gateway_pod_labels(gateway),
            "ports": [
                {
                    "name": egress.port_name(port),
                    "port": port,
                    "targetPort": egress.port_name(port),
                    "protocol": "TCP",
                }
                for port in _mesh_ports(mesh, gateway)
            ],
        },
    }


DNS_PORT = 53


def egress_gateway_policy(mesh: Intent, gateway: model.Gateway) -> Object:
    """Ingress and egress policy for an egress gateway's pods.

    In: only the pods of the services its ExternalServices admit, on the mesh-facing ports
    (named, as the gateway's pods name their container ports). Out: any pod of the cluster (a
    resolver, a span collector), DNS wherever the resolver is, and beyond the cluster only the
    ports its ExternalServices are reached on: a NetworkPolicy names addresses, not host names,
    so which host is the sidecar's to decide (it has an egress destination for no other). An
    ExternalService that lists its `addresses` is reached only at them."""
    by_callers: dict[tuple[tuple[str, str], ...], set[int]] = collections.defaultdict(set)
    out: set[int] = set()
    pinned: dict[int, set[str]] = collections.defaultdict(set)  # port -> CIDRs
    for ext in egress.leaving_through(mesh, gateway):
        callers = tuple(sorted(egress.callers(mesh, ext)))
        if callers:  # an empty `from` would admit everyone: an unused port gets no rule
            by_callers[callers] |= {p.port for p in ext.spec.ports}
        for port in egress.connect_ports(ext):
            if ext.spec.addresses:
                pinned[port] |= {str(ipaddress.ip_network(a)) for a in ext.spec.addresses}
            else:
                out.add(port)
    beyond = [{"ports": [{"protocol": "TCP", "port": p} for p in sorted(out)]}] if out else []
    beyond += [
        {
            "to": [{"ipBlock": {"cidr": c}} for c in sorted(cidrs)],
            "ports": [{"protocol": "TCP", "port": port}],
        }
        for port, cidrs in sorted(pinned.items())
        if port not in out  # already open to any address
    ]
    ingress = [
        {
            "ports": [{"protocol": "TCP", "port": egress.port_name(p)} for p in sorted(ports)],
            "from": _peer_selectors(mesh, callers),
        }
        for callers, ports in sorted(by_callers.items(), key=lambda kv: sorted(kv[1]))
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": egress.service_name(gateway),
            "namespace": gateway.metadata.namespace,
            "labels": _gateway_labels(gateway),
        },
        "spec": {
            "podSelector": {"matchLabels": gateway_pod_labels(gateway)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [
                {"to": [{"namespaceSelector": {}}]},
                {
                    "ports": [
                        {"protocol": "UDP", "port": DNS_PORT},
                        {"protocol": "TCP", "port": DNS_PORT},
                    ]
                },
                *beyond,
            ],
        },
    }
