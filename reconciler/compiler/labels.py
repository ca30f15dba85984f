"""Istio's metric labels for a workload, from its intent, filled as Istio fills them from a pod.

Istio reads `app`, `version` and the canonical-service labels from the pod; Weft's pods carry
the Service's pod selector, so the same labels give the same values, and Istio's defaults
("unknown", "latest", the workload name) where a label is absent. One ProxyConfig holds the
labels of its own workload and of every workload it may call or be called by, so each end of a
request can be named without asking anyone at request time.
See https://istio.io/latest/docs/reference/config/metrics/.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.compiler import proxyconfig as pc
from reconciler.intent import Intent, model


def of(mesh: Intent, service: model.Service) -> pc.PeerLabels:
    pod = service.pod_selector
    workload = service.spec.workload.name or service.metadata.name
    name, ns = service.metadata.name, service.metadata.namespace
    return pc.PeerLabels(
        service=service.ref,
        spiffe_id=mesh.identity_of(service),
        host=f"{name}.{ns}.svc.{mesh.spec.cluster_domain}",
        workload=workload,
        app=pod.get("app") or pod.get("app.kubernetes.io/name") or "unknown",
        # A Service's subsets share one ProxyConfig, so a version label only they set is not
        # known here: "unknown", as Istio reports a pod without one.
        version=pod.get("version") or pod.get("app.kubernetes.io/version") or "unknown",
        canonical_service=pod.get("service.istio.io/canonical-name")
        or pod.get("app.kubernetes.io/name")
        or pod.get("app")
        or workload,
        canonical_revision=pod.get("service.istio.io/canonical-revision")
        or pod.get("app.kubernetes.io/version")
        or pod.get("version")
        or "latest",
    )


def peers(
    mesh: Intent, service: model.Service, others: Iterable[model.Service]
) -> list[pc.PeerLabels]:
    """`service`'s labels first, then each other workload's once, sorted."""
    rest = {o.key: o for o in others if o.key != service.key}
    return [of(mesh, service), *(of(mesh, rest[k]) for k in sorted(rest))]
