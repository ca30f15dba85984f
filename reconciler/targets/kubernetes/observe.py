"""Observe: one LIST per kind — Weft's labelled objects, every workload, namespace and Service
(their ClusterIPs feed the sidecars' capture maps) — and the inventory."""

from __future__ import annotations

import dataclasses

from reconciler.targets.kubernetes import gateways, inventory, objects
from reconciler.targets.kubernetes.api import Api, Object, ref_of


@dataclasses.dataclass
class Observed:
    owned: dict[str, Object]  # Weft-labelled objects of OWNED_KINDS, by ref
    workloads: dict[str, Object]  # every object of objects.WORKLOAD_KINDS, by ref
    namespaces: dict[str, Object]  # by name
    inventory: set[str]
    cluster_ips: dict[tuple[str, str], str]  # (namespace, name) → ClusterIP of every Service
    # The Secrets Gateways read certificates from, by (namespace, name); None: it is missing.
    # Filled by `gateway_secrets` once the desired state names them.
    secrets: dict[tuple[str, str], Object | None] = dataclasses.field(default_factory=dict)

    def fingerprints(self) -> dict[str, str]:
        """What the loop compares between looks: the resourceVersion of every object Weft
        owns and of every workload it injected."""
        found = {ref: o["metadata"].get("resourceVersion", "") for ref, o in self.owned.items()}
        found.update(
            (ref, o["metadata"].get("resourceVersion", ""))
            for ref, o in self.workloads.items()
            if objects.INJECTED in (o["metadata"].get("annotations") or {})
        )
        return found


def observe(api: Api, system_namespace: str) -> Observed:
    owned: dict[str, Object] = {}
    for kind in ("ConfigMap", "NetworkPolicy", "ServiceAccount", "PodTemplate"):
        for obj in api.list(kind, selector=objects.MANAGED_SELECTOR):
            if obj["metadata"]["labels"].get(objects.PART) in ("inventory", "status"):
                continue  # the target's own bookkeeping, not part of any desired state
            owned[ref_of(obj)] = obj
    # Every Service: Weft's discovery Services, and the ClusterIPs apps call, which the
    # sidecars' capture maps need.
    cluster_ips: dict[tuple[str, str], str] = {}
    for obj in api.list("Service"):
        meta = obj["metadata"]
        if (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == "weft":
            owned[ref_of(obj)] = obj
        ip = obj.get("spec", {}).get("clusterIP")
        if ip and ip != "None":
            cluster_ips[(meta["namespace"], meta["name"])] = ip
    workloads = {ref_of(obj): obj for kind in objects.WORKLOAD_KINDS for obj in api.list(kind)}
    # A Gateway's Deployment is Weft's whole, like its ConfigMaps: owned, not a team's workload.
    for ref in [r for r, o in workloads.items() if gateways.is_gateway(o)]:
        owned[ref] = workloads.pop(ref)
    namespaces = {o["metadata"]["name"]: o for o in api.list("Namespace")}
    return Observed(
        owned, workloads, namespaces, inventory.read(api, system_namespace), cluster_ips
    )


def gateway_secrets(api: Api, seen: Observed, refs: list[str]) -> None:
    """Reads the Secrets ("namespace/name") Gateways name into `seen.secrets`, once each."""
    for ref in refs:
        ns, name = ref.split("/")
        if (ns, name) not in seen.secrets:
            seen.secrets[(ns, name)] = api.get("Secret", ns, name)
