"""The objects a DesiredState calls for in this cluster, from what was observed: a sidecar
ConfigMap per Service, an injection into each workload the Service selects (for Jobs, the
PodTemplate their pods are injected from at admission), the discovery Services and
NetworkPolicies (an egress gateway's ClusterIP Service and policy among them), each Gateway's
workload (`gateways`); and the problems that keep a revision from being applied
(a workload two Services claim, a service account that is not the Service's identity, a
namespace that does not exist, a Gateway's missing or broken certificate Secret)."""

from __future__ import annotations

import collections
import logging

from reconciler.compiler import DesiredState
from reconciler.targets.kubernetes import gateways, objects
from reconciler.targets.kubernetes.api import Object, ref_of, split_ref
from reconciler.targets.kubernetes.observe import Observed

log = logging.getLogger("weft.target.kubernetes")


def build(
    desired: DesiredState, observed: Observed, *, image: str, system_namespace: str
) -> tuple[dict[str, Object], list[str]]:
    """Every object (and injection) `desired` calls for, by ref, stamped with the digest
    of itself (`objects.stamped`); and the problems that keep it from being applied."""
    wanted: dict[str, Object] = {}
    problems: list[str] = []
    api_ip = observed.cluster_ips.get(("default", "kubernetes"))
    exclude = [f"{api_ip}/32"] if api_ip else []
    by_namespace: dict[str, list[tuple[str, Object]]] = collections.defaultdict(list)
    for ref, live in sorted(observed.workloads.items()):
        by_namespace[live["metadata"]["namespace"]].append((ref, live))
    claimed: dict[str, str] = {}
    for (ns, svc), config in sorted(desired.proxy_configs.items()):
        cm_ref = f"ConfigMap/{ns}/{objects.sidecar_configmap_name(svc)}"
        inbound = objects.inbound_ports(
            config, objects.live_inbound_ports(observed.owned.get(cm_ref))
        )
        wanted[cm_ref] = objects.sidecar_configmap(ns, svc, config, observed.cluster_ips, inbound)
        spec = desired.workloads[(ns, svc)]
        if spec.kind == "Job":
            # Jobs come and go, and their templates are immutable: their pods are meshed as
            # they are created (deploy/40-jobs.yaml), from this PodTemplate.
            ref = f"PodTemplate/{ns}/{objects.job_injection_name(svc)}"
            unsafe = objects.namespace_problems(
                f"the Jobs of Service {ns}/{svc}",
                ns,
                observed.namespaces.get(ns),
                system_namespace,
            )
            if unsafe:
                problems += unsafe
                continue
            wanted[ref] = objects.job_injection(
                ns,
                service=svc,
                spec=spec,
                config=config,
                image=image,
                inbound=inbound,
                exclude_cidrs=exclude,
            )
            continue
        target_ports = [p.target_port for p in config.inbound]
        for ref, live in by_namespace.get(ns, []):
            if not objects.selects(spec, live):
                continue
            if ref in claimed:
                problems.append(
                    f"{ref} is selected by Service {claimed[ref]} and by Service {ns}/{svc};"
                    " a workload can belong to one meshed Service only"
                )
                continue
            claimed[ref] = f"{ns}/{svc}"
            account = objects.service_account_of(live)
            if account != config.workload.service_account:
                problems.append(
                    f"{ref} runs as service account {account!r}, but Service {ns}/{svc}'s"
                    f" identity is {config.workload.spiffe_id}; set serviceAccountName"
                    f" to {config.workload.service_account!r} or the Service's"
                    " serviceAccount to match"
                )
                continue
            unsafe = objects.injection_problems(live, observed.namespaces.get(ns), system_namespace)
            if unsafe:
                problems += unsafe
                continue
            wanted[ref] = objects.injection(
                live["kind"],
                ns,
                live["metadata"]["name"],
                service=svc,
                config=config,
                image=image,
                inbound=inbound,
                exclude_cidrs=exclude,
                probes=objects.app_probes(live, target_ports),
            )
    for obj in [*desired.discovery_services, *desired.network_policies]:
        wanted[ref_of(obj)] = obj
    for key, config in sorted(desired.gateway_configs.items()):
        problems += gateways.secret_problems(config, observed.secrets)
        for obj in gateways.objects(config, desired.gateway_runs[key], image):
            wanted[ref_of(obj)] = obj
    missing = sorted({split_ref(r)[1] or "" for r in wanted} - set(observed.namespaces) - {""})
    problems += [f"namespace {ns} does not exist" for ns in missing]
    if system_namespace not in observed.namespaces:
        problems.append(f"namespace {system_namespace} does not exist (apply deploy/ first)")
    return {ref: objects.stamped(body) for ref, body in wanted.items()}, problems
