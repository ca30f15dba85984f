"""The Kubernetes objects Weft owns, built from a DesiredState: pure data, no I/O.

Per Service: a ConfigMap with its ProxyConfig and the sidecar's listeners, and the injection into
each of its workloads (the sidecar as a native sidecar container, the capture init container and
two volumes — nothing else of the pod template). The compiler's discovery Services and
NetworkPolicies are used as they are. Identity Secrets are the identity store's
(`reconciler.identity.secretstore`).

Ports inside a meshed pod are fixed, as in every mesh: the app's own ports stay the app's, and
iptables sends inbound traffic for them to the sidecar's mTLS listeners.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from reconciler import capture
from reconciler.compiler import WorkloadSpec
from reconciler.compiler import proxyconfig as pc
from reconciler.identity.secretstore import workload_secret_name

Object = dict[str, Any]

MANAGED_BY = {"app.kubernetes.io/managed-by": "weft"}
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=weft"
PART = "weft.dev/part"
SERVICE = "weft.dev/service"
INJECTED = "weft.dev/injected-for"  # annotation on a workload: the Service it is meshed for
SYSTEM_NAMESPACE = "weft-system"
INVENTORY = "weft-inventory"
STATUS = "weft-status"

SIDECAR = "weft-sidecar"
CAPTURE = "weft-capture"
CONFIG_VOLUME, CERTS_VOLUME = "weft-config", "weft-certs"
CONFIG_DIR, CERTS_DIR = "/etc/weft/config", "/etc/weft/certs"
SIDECAR_UID = capture.PROXY_UID
ADMIN_PORT = 15020
CAPTURE_PORT = capture.CAPTURE_PORT
OUTBOUND_HTTP_PORT = 15080
INBOUND_BASE = 15100  # inbound port i of the service: 15100 + i
TCP_BASE = 15200  # the i-th TCP upstream or egress, for apps that address the sidecar directly
CAPTURE_SCRIPT = "/usr/local/lib/weft/weft-capture.sh"

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def sidecar_configmap_name(service: str) -> str:
    return f"{service}-weft-sidecar"


def labels(part: str, service: str | None = None) -> dict[str, str]:
    found = {**MANAGED_BY, PART: part}
    if service:
        found[SERVICE] = service
    return found


def listeners(
    config: pc.ProxyConfig, cluster_ips: Mapping[tuple[str, str], str] | None = None
) -> dict[str, Any]:
    """Where the sidecar listens inside the pod (the `Listeners` object of docs/proxyconfig.md).

    `cluster_ips` are the ClusterIPs of the Kubernetes Services apps call by name: a captured
    connection to one of them, on a TCP upstream's port, is that upstream (HTTP is routed by its
    Host header and needs no address)."""
    data = config.as_dict()
    tcp_keys = [f"{t['service']}:{t['port']}" for t in data["outbound"]["tcp"]]
    tcp_keys += [
        f"{e['host']}:{e['port']}" for e in data["outbound"]["egress"] if e["protocol"] != "http"
    ]
    originals = {}
    for t in data["outbound"]["tcp"]:
        ns, name = t["service"].split("/")
        ip = (cluster_ips or {}).get((ns, name))
        if ip:
            originals[f"{ip}:{t['port']}"] = f"{t['service']}:{t['port']}"
    return {
        "inbound": {
            p["name"]: f"0.0.0.0:{INBOUND_BASE + i}" for i, p in enumerate(data["inbound"])
        },
        "app": {p["name"]: f"127.0.0.1:{p['targetPort']}" for p in data["inbound"]},
        "outboundHttp": f"127.0.0.1:{OUTBOUND_HTTP_PORT}",
        "outboundTcp": {k: f"127.0.0.1:{TCP_BASE + i}" for i, k in enumerate(sorted(tcp_keys))},
        # iptables REDIRECT from OUTPUT rewrites the destination to loopback.
        "outboundCapture": f"127.0.0.1:{CAPTURE_PORT}",
        "originalDestinations": dict(sorted(originals.items())),
    }


def sidecar_configmap(
    namespace: str,
    service: str,
    config: pc.ProxyConfig,
    cluster_ips: Mapping[tuple[str, str], str] | None = None,
) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": sidecar_configmap_name(service),
            "namespace": namespace,
            "labels": labels("sidecar-config", service),
        },
        "data": {
            "proxyconfig.json": config.to_json(),
            "listeners.json": json.dumps(listeners(config, cluster_ips), indent=2, sort_keys=True)
            + "\n",
        },
    }


def capture_args(config: pc.ProxyConfig) -> list[str]:
    """The capture script's arguments: outbound to the capture listener, except the sidecar's
    own traffic, and each pod port's inbound traffic to its mTLS listener."""
    inbound = {p.target_port: INBOUND_BASE + i for i, p in enumerate(config.inbound)}
    command = capture.apply_command(
        proxy_uid=SIDECAR_UID, capture_port=CAPTURE_PORT, inbound=inbound
    )
    return command[2:]  # without "sh <path in this checkout>": the image has its own copy


def injection(
    kind: str, namespace: str, name: str, *, service: str, config: pc.ProxyConfig, image: str
) -> Object:
    """The fields Weft applies to one workload, and nothing more: server-side apply gives Weft
    ownership of exactly these, and the application team keeps every other field."""
    service_account = config.workload.service_account
    probe = {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 2}
    sidecar = {
        "name": SIDECAR,
        "image": image,
        # A native sidecar (an init container that keeps running): the app's containers start
        # only once its startup probe passes, so no app request races the proxy's readiness.
        "restartPolicy": "Always",
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
        "ports": [{"name": "weft-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "startupProbe": {**probe, "failureThreshold": 60},
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": {
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            # Only the sidecar mounts the certificates: the app never sees the key.
            {"name": CERTS_VOLUME, "mountPath": CERTS_DIR, "readOnly": True},
        ],
    }
    capture = {
        "name": CAPTURE,
        "image": image,
        "command": ["/bin/sh", CAPTURE_SCRIPT],
        "args": capture_args(config),
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "annotations": {INJECTED: service}},
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [capture, sidecar],
                    "volumes": [
                        {
                            "name": CONFIG_VOLUME,
                            "configMap": {"name": sidecar_configmap_name(service)},
                        },
                        {
                            "name": CERTS_VOLUME,
                            "secret": {
                                "secretName": workload_secret_name(service_account),
                                "defaultMode": 0o444,  # the sidecar runs as 1337, not root
                            },
                        },
                    ],
                }
            }
        },
    }


def release(kind: str, namespace: str, name: str) -> Object:
    """An apply of nothing: the server removes every field only Weft owned."""
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
    }


def selects(spec: WorkloadSpec, workload: Mapping[str, Any]) -> bool:
    """Whether a live workload's pods are this Service's (its kind, name if named, labels)."""
    if workload.get("kind") != spec.kind:
        return False
    if spec.name is not None and workload["metadata"]["name"] != spec.name:
        return False
    pod_labels = (
        workload.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
    )
    return bool(spec.pod_selector) and all(pod_labels.get(k) == v for k, v in spec.pod_selector)


def service_account_of(workload: Mapping[str, Any]) -> str:
    pod = workload.get("spec", {}).get("template", {}).get("spec", {})
    return str(pod.get("serviceAccountName") or pod.get("serviceAccount") or "default")
