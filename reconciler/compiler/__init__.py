"""The compiler: a pure, deterministic function from a validated Intent to `DesiredState`.

Same intent in, byte-identical output out. It owns all policy semantics; nothing here knows
which target will apply the result.

    from reconciler import compiler
    desired = compiler.compile(mesh)
    compiler.write(desired, out_dir)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml

from reconciler.allocation import without_gc_pauses
from reconciler.compiler import (
    authz,
    egress,
    gateways,
    identities,
    kubernetes,
    labels,
    outbound,
    policy,
    reach,
)
from reconciler.compiler import proxyconfig as pc
from reconciler.intent import Intent

__all__ = ["DesiredState", "WorkloadSpec", "compile", "policy", "reach", "write"]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """How a target runs one Service: its instances (one per subset, or one); for the local
    runtime, the command that starts the app; for a cluster, which workloads are its pods."""

    instances: tuple[str, ...]
    command: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...]
    kind: str = "Deployment"  # Deployment | StatefulSet | DaemonSet | CronJob | Job
    name: str | None = None  # set only when the intent names the workload explicitly
    pod_selector: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayRun:
    """How a cluster runs one Gateway: pods with these labels, exposed by a Service of this
    type (the listeners and certificates are its ProxyConfig's)."""

    service_type: Literal["LoadBalancer", "NodePort"]
    replicas: int
    pod_labels: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class DesiredState:
    revision: str
    proxy_configs: dict[tuple[str, str], pc.ProxyConfig]
    identities: list[identities.Identity]
    # Headless per Service (and subset); a ClusterIP per egress gateway, which callers address.
    discovery_services: list[dict[str, Any]]
    # Per Service (and the egress of those confined to the cluster); per egress gateway.
    network_policies: list[dict[str, Any]]
    edges: list[policy.Edge]
    workloads: dict[tuple[str, str], WorkloadSpec]
    trust_domain: str
    certificate_lifetime_ms: int
    # Gateways' ProxyConfigs, by (namespace, name): workloads with no app of their own (an
    # egress gateway's inbound ports hand requests to its own outbound side).
    gateway_configs: dict[tuple[str, str], pc.ProxyConfig] = dataclasses.field(default_factory=dict)
    gateway_runs: dict[tuple[str, str], GatewayRun] = dataclasses.field(default_factory=dict)


ESCAPED_SLASHES: dict[str, Literal["REJECT", "KEEP", "DECODE"]] = {
    "reject": "REJECT",
    "keep": "KEEP",
    "decode": "DECODE",
}


@without_gc_pauses
def compile(mesh: Intent) -> DesiredState:  # the domain's word for it
    selection = policy.Selection(mesh)
    routes = outbound.RouteTable(mesh)
    edges_by_source = policy.edges(selection)
    telemetry = pc.Telemetry(
        sampling_percent=mesh.spec.telemetry.sampling_percent,
        otlp_endpoint=mesh.spec.telemetry.otlp_endpoint,
    )
    paths = pc.PathNormalization(
        escaped_slashes=ESCAPED_SLASHES[mesh.spec.path_normalization.escaped_slashes]
    )
    configs: dict[tuple[str, str], pc.ProxyConfig] = {}
    inbound_edges: dict[tuple[str, str], list[policy.Edge]] = {key: [] for key in mesh.services}
    for key in mesh.services:
        for edge in edges_by_source[key]:
            inbound_edges[edge.dest.key].append(edge)
    for key, svc in mesh.services.items():
        ends = [e.dest for e in edges_by_source[key]] + [e.source for e in inbound_edges[key]]
        configs[key] = pc.ProxyConfig(
            schema_version=pc.SCHEMA_VERSION,
            revision=mesh.revision,
            trust_domain=mesh.spec.trust_domain,
            mtls=mesh.spec.mtls,
            workload=pc.Workload(
                namespace=svc.metadata.namespace,
                service=svc.metadata.name,
                service_account=svc.service_account,
                spiffe_id=mesh.identity_of(svc),
            ),
            inbound=authz.inbound(selection, svc),
            outbound=outbound.build(mesh, routes, svc, edges_by_source[key], selection),
            telemetry=dataclasses.replace(telemetry, peers=labels.peers(mesh, svc, ends)),
            path_normalization=paths,
        )
    gateway_configs = {
        key: pc.ProxyConfig(
            schema_version=pc.SCHEMA_VERSION,
            revision=mesh.revision,
            trust_domain=mesh.spec.trust_domain,
            mtls=mesh.spec.mtls,
            workload=pc.Workload(
                namespace=gw.metadata.namespace,
                service=gw.metadata.name,
                service_account=gw.service_account,
                spiffe_id=mesh.identity_of(gw),
            ),
            inbound=egress.gateway_inbound(mesh, gw),
            outbound=dataclasses.replace(
                outbound.gateway(mesh, gw), egress=egress.gateway_destinations(mesh, gw)
            ),
            telemetry=telemetry,
            path_normalization=paths,
            gateway=[
                gateways.listener(
                    gw,
                    listener,
                    authz.authentication(ra) if (ra := mesh.gateway_authentication(gw)) else None,
                )
                for listener in gw.spec.listeners
            ],
        )
        for key, gw in sorted(mesh.gateways.items())
    }
    permissive = mesh.spec.mtls == "PERMISSIVE"
    egress_gateways = [
        gw for _, gw in sorted(mesh.gateways.items()) if egress.leaving_through(mesh, gw)
    ]
    # The gateways each service port admits: its NetworkPolicy lets their pods in.
    gateway_callers = kubernetes.gateway_callers(reach.entries(mesh, selection))
    return DesiredState(
        revision=mesh.revision,
        proxy_configs=dict(sorted(configs.items())),
        identities=identities.required(mesh),
        discovery_services=[
            obj for svc in mesh.services.values() for obj in kubernetes.discovery_services(svc)
        ]
        + [kubernetes.egress_gateway_service(mesh, gw) for gw in egress_gateways],
        network_policies=[
            kubernetes.network_policy(
                mesh,
                svc,
                inbound_edges[key],
                open_to_all=permissive and selection.default().decision == "allow",
                gateways=gateway_callers.get(svc.ref, {}),
            )
            for key, svc in mesh.services.items()
        ]
        + [kubernetes.egress_within_cluster(svc) for svc in egress.confined(mesh)]
        + [kubernetes.egress_gateway_policy(mesh, gw) for gw in egress_gateways],
        edges=[e for key in sorted(edges_by_source) for e in edges_by_source[key]],
        workloads={
            key: WorkloadSpec(
                instances=tuple(s.name for s in svc.spec.subsets) or ("default",),
                command=tuple(svc.spec.local.command) if svc.spec.local else None,
                env=tuple(sorted(svc.spec.local.env.items())) if svc.spec.local else (),
                kind=svc.spec.workload.kind,
                name=svc.spec.workload.name,
                pod_selector=tuple(sorted(svc.pod_selector.items())),
            )
            for key, svc in sorted(mesh.services.items())
        },
        trust_domain=mesh.spec.trust_domain,
        certificate_lifetime_ms=mesh.spec.certificate_lifetime,
        gateway_configs=gateway_configs,
        gateway_runs={
            key: GatewayRun(
                service_type=gw.spec.kubernetes.service_type,
                replicas=gw.spec.kubernetes.replicas,
                pod_labels=tuple(sorted(kubernetes.gateway_pod_labels(gw).items())),
            )
            for key, gw in sorted(mesh.gateways.items())
        },
    )


def _yaml(obj: dict[str, Any]) -> str:
    # libyaml's emitter: same bytes as safe_dump, four times faster.
    text: str = yaml.dump(obj, Dumper=yaml.CSafeDumper, sort_keys=False, default_flow_style=False)
    return text


@without_gc_pauses
def files(desired: DesiredState) -> dict[str, str]:
    """The compiled output as relative path -> text: what `weft compile --out` writes."""
    out: dict[str, str] = {"revision": desired.revision + "\n"}
    for (ns, name), config in desired.proxy_configs.items():
        out[f"proxyconfigs/{ns}/{name}.json"] = config.to_json()
    for (ns, name), config in desired.gateway_configs.items():
        out[f"gateways/{ns}/{name}.json"] = config.to_json()
    out["identities.json"] = json.dumps([i.as_json() for i in desired.identities], indent=2) + "\n"
    for obj in desired.discovery_services + desired.network_policies:
        meta = obj["metadata"]
        out[f"kubernetes/{meta['namespace']}/{obj['kind'].lower()}-{meta['name']}.yaml"] = _yaml(
            obj
        )
    out["edges.json"] = (
        json.dumps(
            [
                {
                    "source": e.source.ref,
                    "destination": e.dest.ref,
                    "port": e.port.name,
                    "decision": e.verdict.decision,
                    "policies": list(e.verdict.policies),
                }
                for e in desired.edges
            ],
            indent=2,
        )
        + "\n"
    )
    return dict(sorted(out.items()))


def write(desired: DesiredState, out_dir: Path) -> None:
    """Write the output tree atomically: a reader sees the old tree or the new, never a mix."""
    out_dir = out_dir.absolute()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "revision").is_file():
        # Replacing the tree deletes the old one: only ever delete what a compile wrote.
        raise FileExistsError(f"{out_dir} is not empty and holds no earlier `weft compile` output")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for rel, text in files(desired).items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out_dir, old)
            os.rename(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
