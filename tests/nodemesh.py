"""The template's mesh on the real node (tests/node.py), as a user runs it: deploy/ applied with
the reconciler following a git daemon on the node, and the template's workloads applied as their
app teams would, the ones that run being `weft demo-app` from Weft's image. Shared by the node
tests and the node benchmark (bench/node.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.gitservers import GitDaemon, Upstream
from tests.kubeapps import DEPLOY, TEMPLATE, TEMPLATE_NAMESPACES, WORKLOADS, workload
from tests.node import RELEASED_IMAGE, Node

SAMPLE_REPO = "https://git.example.com/platform/mesh.git"  # what deploy/ says to replace
# The workloads that run (namespace, name) -> (the instance their demo app reports, the port it
# listens on: the intent's targetPort, where the sidecar delivers).
RUNNING = {
    ("a", "web"): ("web", 8080),
    ("a", "worker"): ("worker", 9090),
    ("b", "api-v1"): ("v1", 8081),
    ("b", "api-v2"): ("v2", 8081),
    ("c", "ledger"): ("ledger", 8080),
}
# The probes the app teams wrote, on the meshed ports: capture would hand the kubelet's plain
# probe to the mTLS listener, so each pod gets them rewritten to the sidecar's admin port.
PROBES: dict[tuple[str, str], dict[str, Any]] = {
    ("a", "web"): {"readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}},
    ("a", "worker"): {
        "readinessProbe": {"grpc": {"port": 9090}},
        "livenessProbe": {"grpc": {"port": 9090, "service": "worker"}, "periodSeconds": 5},
    },
    ("b", "api-v1"): {"readinessProbe": {"tcpSocket": {"port": 8081}}},
    ("b", "api-v2"): {
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8081}},
        "livenessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 5},
    },
    ("c", "ledger"): {"readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}},
}
# a/worker's app: a gRPC server whose only service is grpc.health.v1.Health, answering
# SERVING for the server ("") and for "worker", NOT_FOUND for anything else (grpcio is in
# Weft's image for the sidecar's gRPC probes). On loopback: only the sidecar probes it.
GRPC_HEALTH = """
from concurrent import futures
import grpc
def check(request, context):
    if request[2:] not in (b"", b"worker"):
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return b"\\x08\\x01"
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
health = grpc.method_handlers_generic_handler(
    "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
server.add_generic_rpc_handlers([health])
server.add_insecure_port("127.0.0.1:9090")
server.start()
server.wait_for_termination()
"""
# The app teams' ClusterIP Services that clients call by name: (namespace, name, targetPort).
APP_SERVICES = [("a", "web", 8080), ("b", "api", 8081), ("c", "ledger", 8080)]


def live_pods(node: Node, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The namespace's pods the selector picks, leaving out those being deleted."""
    found = node.cp.admin().request(
        "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)]
    )
    return [p for p in found.get("items", []) if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def wait(
    what: str, predicate: Any, node: Node, namespaces: tuple[str, ...], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            report = "\n".join(node.diagnose(ns) for ns in namespaces)
            raise AssertionError(f"{what}: not so after {timeout:.0f} s\n{report}")
        time.sleep(1)


@dataclasses.dataclass
class Deployed:
    up: Upstream
    files: dict[str, str]
    head: str  # the revision applied


@contextlib.contextmanager
def deploy(node: Node, tmp: Path) -> Iterator[Deployed]:
    """deploy/ applied as a user applies it, the template's workloads as its app teams would,
    and the reconciler converged on the repository's head; yields that revision."""
    up = Upstream(tmp / "git", "mesh.git")
    files = {str(p.relative_to(TEMPLATE)): p.read_text() for p in TEMPLATE.rglob("*.yaml")}
    sha = up.commit(files, "seed")
    api = node.cp.admin()
    with GitDaemon(tmp / "git") as daemon:
        node.expose(node.node_ip, daemon.port, daemon.port)
        url = f"git://{node.node_ip}:{daemon.port}/mesh.git"
        for ns in TEMPLATE_NAMESPACES:
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for ns, sa in sorted({(w[1], w[4]) for w in WORKLOADS}):
            api.request(
                "POST",
                f"/api/v1/namespaces/{ns}/serviceaccounts",
                body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}},
            )
        for ns, name, target_port in APP_SERVICES:
            api.request(
                "POST",
                f"/api/v1/namespaces/{ns}/services",
                body={
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name},
                    "spec": {
                        "selector": {"app": name},
                        "ports": [{"name": "http", "port": 8080, "targetPort": target_port}],
                    },
                },
            )
        for kind, ns, name, labels, sa in WORKLOADS:
            obj = workload(kind, ns, name, labels, sa)
            pod = obj["spec"]["template"]["spec"]
            if (ns, name) in RUNNING:
                port = RUNNING[(ns, name)][1]
                grpc_app = (ns, name) == ("a", "worker")
                pod["containers"][0].update(
                    image=RELEASED_IMAGE,
                    command=["python3", "-c", GRPC_HEALTH] if grpc_app else ["weft", "demo-app"],
                    env=[
                        {"name": "WEFT_SERVICE", "value": f"{ns}/{labels['app']}"},
                        {"name": "WEFT_INSTANCE", "value": RUNNING[(ns, name)][0]},
                        {"name": "PORT", "value": str(port)},
                    ],
                    ports=[
                        {
                            "name": "grpc" if grpc_app else "http",
                            "containerPort": port,
                            "protocol": "TCP",
                        }
                    ],
                    **{k: {"periodSeconds": 2, **v} for k, v in PROBES[(ns, name)].items()},
                )
            else:
                obj["spec"]["replicas"] = 0
            api.apply(obj, manager="app-team")
        # The namespace, RBAC, probes and Jobs policies as they are; the Deployment with WEFT_REPO
        # set, as its comment says to.
        node.cp.kubectl(
            "apply",
            *("-f", str(DEPLOY / "00-namespace.yaml"), "-f", str(DEPLOY / "10-rbac.yaml")),
            *("-f", str(DEPLOY / "30-probes.yaml"), "-f", str(DEPLOY / "40-jobs.yaml")),
        )
        manifest = (DEPLOY / "20-reconciler.yaml").read_text()
        assert SAMPLE_REPO in manifest
        node.cp.kubectl("apply", "-f", "-", stdin=manifest.replace(SAMPLE_REPO, url))
        head = f"main@sha1:{sha}"

        def converged() -> bool:
            pods = live_pods(node, "weft-system", "app.kubernetes.io/name=weft-reconciler")
            if len(pods) != 2 or not all(ready(p) for p in pods):
                return False
            cm = api.get("ConfigMap", "weft-system", "weft-status")
            status = json.loads(cm["data"]["status.json"]) if cm else {}
            return bool(status.get("lastAppliedRevision") == head)

        wait(f"converged on {head}", converged, node, ("weft-system",), 150)
        yield Deployed(up, files, head)


def wait_meshed(node: Node) -> None:
    """Until every running workload's pods are injected ones, and Ready."""

    def meshed_ready() -> bool:
        for (ns, name), _ in RUNNING.items():
            labels = next(w[3] for w in WORKLOADS if w[1] == ns and w[2] == name)
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            pods = [
                p
                for p in live_pods(node, ns, selector)
                if "weft-sidecar" in [c["name"] for c in p["spec"].get("initContainers", [])]
            ]
            if not pods or not all(ready(p) for p in pods):
                return False
        return True

    wait("meshed pods Ready", meshed_ready, node, ("a", "b", "c"), 180)


def netns_of(ip: str) -> str:
    """The CNI network namespace holding a pod's address."""
    for ns in sorted(Path("/var/run/netns").glob("cni-*")):
        out = subprocess.run(
            ["ip", "-n", ns.name, "-4", "-o", "addr"], capture_output=True, text=True, check=False
        ).stdout
        if f"inet {ip}/" in out:
            return ns.name
    raise AssertionError(f"no network namespace holds {ip}")


def meshed_pod(node: Node, ns: str, name: str) -> dict[str, Any]:
    labels = next(w[3] for w in WORKLOADS if w[1] == ns and w[2] == name)
    (pod,) = [
        p
        for p in live_pods(node, ns, ",".join(f"{k}={v}" for k, v in labels.items()))
        if "weft-sidecar" in [c["name"] for c in p["spec"].get("initContainers", [])]
    ]
    return pod
