"""The Kubernetes objects of one Gateway, ingress or egress: pure data, no I/O.

A Gateway is a workload Weft owns whole (unlike a Service's pods, which are their team's): a
ServiceAccount (its SPIFFE identity), a ConfigMap with its ProxyConfig and listeners, and a
Deployment running `weft sidecar` in gateway mode from the sidecars' image.

An ingress gateway also gets a Service of type LoadBalancer (or NodePort) in front of it and a
NetworkPolicy that lets the outside reach its listeners and nothing else. Certificates named by
Secret are mounted where the ProxyConfig reads them (`proxyconfig.GATEWAY_SECRETS_DIR`); their
content never passes through Weft, which only checks them (`secret_problems`) so a missing or
broken Secret fails the plan by name.

An egress gateway listens on a mesh-facing mTLS port per ExternalService port, each handed to
its own outbound side (`listeners`), which leaves the cluster. Its ClusterIP Service and its
NetworkPolicy are the compiler's (what callers address, and who may, and where it may go), as
a service's discovery Service and NetworkPolicy are: they name its container ports by the
inbound ports' names, which the Deployment gives them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from reconciler import _native
from reconciler.compiler import GatewayRun, gateways
from reconciler.compiler import proxyconfig as pc
from reconciler.identity.secretstore import workload_secret_name
from reconciler.targets.kubernetes.objects import (
    ADMIN_PORT,
    CERTS_DIR,
    CERTS_VOLUME,
    CONFIG_DIR,
    CONFIG_VOLUME,
    INBOUND_BASE,
    MANAGED_BY,
    OUTBOUND_HTTP_PORT,
    PART,
    Object,
    sidecar_security,
)

CONTAINER = "weft-gateway"
LISTENER_BASE = 15300  # the i-th listener inside the pod: unprivileged, whatever port it serves
GATEWAY_PART = "gateway"


def name_of(gateway: str) -> str:
    return f"{gateway}-weft-gateway"


def labels(gateway: str) -> dict[str, str]:
    return {**MANAGED_BY, PART: GATEWAY_PART, "weft.dev/gateway-name": gateway}


def is_gateway(obj: Mapping[str, Any]) -> bool:
    """Whether a live object is one a Gateway's (a Deployment Weft created whole)."""
    found = obj.get("metadata", {}).get("labels") or {}
    return bool(found.get(PART) == GATEWAY_PART and MANAGED_BY.items() <= found.items())


def is_egress(config: pc.ProxyConfig) -> bool:
    """An egress gateway's config has mesh-facing (inbound) ports and no listeners."""
    return bool(config.inbound)


def _container_ports(config: pc.ProxyConfig) -> list[tuple[pc.GatewayListener, int]]:
    return [(gl, LISTENER_BASE + i) for i, gl in enumerate(config.gateway or ())]


def _mesh_ports(config: pc.ProxyConfig) -> list[tuple[pc.InboundPort, int]]:
    """An egress gateway's mTLS listener in the pod per inbound port, numbered as a sidecar's."""
    return [(p, INBOUND_BASE + i) for i, p in enumerate(config.inbound)]


def listeners(config: pc.ProxyConfig) -> dict[str, Any]:
    """Where the gateway listens in its pod (the `Listeners` of docs/proxyconfig.md). An egress
    gateway's mesh-facing ports hand each admitted request to its own outbound listener as its
    "app", where the ExternalService is an egress destination."""
    found: dict[str, Any] = {
        "gateway": {gl.name: f"0.0.0.0:{port}" for gl, port in _container_ports(config)}
    }
    if is_egress(config):
        outbound = f"127.0.0.1:{OUTBOUND_HTTP_PORT}"
        mesh = _mesh_ports(config)
        found["inbound"] = {p.name: f"0.0.0.0:{port}" for p, port in mesh}
        found["app"] = {p.name: outbound for p, _ in mesh}
        found["outboundHttp"] = outbound
    return found


def objects(config: pc.ProxyConfig, run: GatewayRun, image: str) -> list[Object]:
    """Every object of one Gateway, in the order they are applied."""
    ns, name = config.workload.namespace, config.workload.service
    account = config.workload.service_account

    def meta() -> Object:
        return {"name": name_of(name), "namespace": ns, "labels": labels(name)}

    ports = _container_ports(config)
    pod_labels = dict(run.pod_labels)
    secrets = gateways.secrets(config)
    probe = {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 2}
    container = {
        "name": CONTAINER,
        "image": image,
        "args": [
            "sidecar",
            "--config",
            f"{CONFIG_DIR}/proxyconfig.json",
            "--listeners",
            f"{CONFIG_DIR}/listeners.json",
            "--certs",
            CERTS_DIR,
            "--admin",
            f"0.0.0.0:{ADMIN_PORT}",
        ],
        "ports": [
            *(
                {"name": f"l-{gl.name}"[:15], "containerPort": port, "protocol": "TCP"}
                for gl, port in ports
            ),
            # Named as the inbound port: the compiler's Service and NetworkPolicy say these names.
            *(
                {"name": p.name, "containerPort": port, "protocol": "TCP"}
                for p, port in _mesh_ports(config)
            ),
            {"name": "weft-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": sidecar_security(),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": CERTS_VOLUME, "mountPath": CERTS_DIR, "readOnly": True},
            *(
                {
                    "name": f"edge-{i}",
                    "mountPath": f"{pc.GATEWAY_SECRETS_DIR}/{ref.split('/')[1]}",
                    "readOnly": True,
                }
                for i, ref in enumerate(secrets)
            ),
        ],
    }
    volumes = [
        {"name": CONFIG_VOLUME, "configMap": {"name": name_of(name)}},
        {
            "name": CERTS_VOLUME,
            "secret": {"secretName": workload_secret_name(account), "defaultMode": 0o444},
        },
        # Read by the gateway's user (1337): the key is readable only inside its own pod.
        *(
            {"name": f"edge-{i}", "secret": {"secretName": ref.split("/")[1], "defaultMode": 0o444}}
            for i, ref in enumerate(secrets)
        ),
    ]
    edge: list[Object] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(),
            "spec": {
                "type": run.service_type,
                "selector": pod_labels,
                "ports": [
                    {"name": gl.name, "port": gl.port, "targetPort": port, "protocol": "TCP"}
                    for gl, port in ports
                ],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(),
            "spec": {
                "podSelector": {"matchLabels": pod_labels},
                "policyTypes": ["Ingress"],
                # From anywhere (it is the edge), to its listeners only: not the admin port.
                "ingress": [{"ports": [{"protocol": "TCP", "port": port} for _, port in ports]}],
            },
        },
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": ns, "labels": labels(name)},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(),
            "data": {
                "proxyconfig.json": config.to_json(),
                "listeners.json": json.dumps(listeners(config), indent=2, sort_keys=True) + "\n",
            },
        },
        # An egress gateway is reached through the compiler's ClusterIP Service, never from
        # outside: no Service of its own, no NetworkPolicy opening it to anyone.
        *([] if is_egress(config) else edge),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": run.replicas,
                "selector": {"matchLabels": pod_labels},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "serviceAccountName": account,
                        "automountServiceAccountToken": False,
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            },
        },
    ]


def secret_problems(
    config: pc.ProxyConfig, found: Mapping[tuple[str, str], Object | None]
) -> list[str]:
    """Why the Secrets a Gateway's listeners name cannot serve (missing, wrong keys, not a
    certificate and matching key), each naming the Gateway and the Secret; `found` holds the
    live Secrets by (namespace, name), None for one that does not exist."""
    gw = f"{config.workload.namespace}/{config.workload.service}"
    problems = []
    cert_secrets = {c.secret for gl in config.gateway or () for c in gl.certificates if c.secret}
    ca_secrets = {gl.client_ca_secret for gl in config.gateway or () if gl.client_ca_secret}
    for ref in sorted(cert_secrets | ca_secrets):
        ns, name = ref.split("/")
        secret = found.get((ns, name))
        if secret is None:
            problems.append(f"Gateway {gw}: Secret {ref} does not exist")
            continue
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        try:
            if ref in cert_secrets:
                if "tls.crt" not in data or "tls.key" not in data:
                    raise ValueError("it has no tls.crt and tls.key (a kubernetes.io/tls Secret)")
                _native.check_edge_certificate(data["tls.crt"], data["tls.key"])
            if ref in ca_secrets:
                if "ca.crt" not in data:
                    raise ValueError("it has no ca.crt (the client CA bundle)")
                _native.check_edge_client_ca(data["ca.crt"])
        except ValueError as e:
            problems.append(f"Gateway {gw}: Secret {ref} is not a usable certificate: {e}")
    return problems
