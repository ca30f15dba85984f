"""deploy/ on the real node: the reconciler runs as pods of its Deployment, from the image
deploy/Dockerfile builds, follows a git daemon through the pod network, and reconciles.

The API server and the git daemon listen on 127.0.0.1; the node reaches them from pods at the
kubernetes Service's ClusterIP and at the node's address (tests/node.py's `expose`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gitservers import GitDaemon, Upstream
from tests.kubeapps import DEPLOY, TEMPLATE, TEMPLATE_NAMESPACES, WORKLOADS, workload
from tests.node import Node

SAMPLE_REPO = "https://git.example.com/platform/mesh.git"  # what deploy/ says to replace


@pytest.fixture
def upstream(node: Node, tmp_path: Path) -> Iterator[tuple[str, str]]:
    up = Upstream(tmp_path / "git", "mesh.git")
    files = {str(p.relative_to(TEMPLATE)): p.read_text() for p in TEMPLATE.rglob("*.yaml")}
    sha = up.commit(files, "seed")
    with GitDaemon(tmp_path / "git") as daemon:
        node.expose(node.node_ip, daemon.port, daemon.port)
        yield sha, f"git://{node.node_ip}:{daemon.port}/mesh.git"


def _reconciler_pods(node: Node) -> list[dict[str, Any]]:
    pods = node.cp.admin().request(
        "GET",
        "/api/v1/namespaces/weft-system/pods",
        query=[("labelSelector", "app.kubernetes.io/name=weft-reconciler")],
    )
    return list(pods.get("items", []))


def _ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def test_the_reconciler_runs_as_its_deployment_and_applies_the_repository(
    node: Node, upstream: tuple[str, str]
) -> None:
    sha, url = upstream
    api = node.cp.admin()
    for ns in TEMPLATE_NAMESPACES:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for kind, ns, name, labels, sa in WORKLOADS:
        obj = workload(kind, ns, name, labels, sa)
        obj["spec"]["replicas"] = 0  # their images are not on this node; the templates matter
        api.apply(obj, manager="app-team")
    # deploy/ as a user applies it: the namespace and RBAC as they are, the Deployment with
    # WEFT_REPO set (its comment says to).
    node.cp.kubectl(
        "apply", "-f", str(DEPLOY / "00-namespace.yaml"), "-f", str(DEPLOY / "10-rbac.yaml")
    )
    manifest = (DEPLOY / "20-reconciler.yaml").read_text()
    assert SAMPLE_REPO in manifest
    node.cp.kubectl("apply", "-f", "-", stdin=manifest.replace(SAMPLE_REPO, url))

    head = f"main@sha1:{sha}"

    def converged() -> bool:
        pods = _reconciler_pods(node)
        if len(pods) != 2 or not all(_ready(p) for p in pods):
            return False
        cm = api.get("ConfigMap", "weft-system", "weft-status")
        status = json.loads(cm["data"]["status.json"]) if cm else {}
        return bool(status.get("lastAppliedRevision") == head)

    deadline = time.monotonic() + 150
    while not converged():
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged on {head}\n{node.diagnose('weft-system')}")
        time.sleep(1)

    pods = _reconciler_pods(node)
    # Both replicas Ready (readiness is the reconciler's own /healthz), one holds the Lease.
    lease = api.get("Lease", "weft-system", "weft-reconciler")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] in {p["metadata"]["name"] for p in pods}
    # And it wrote the mesh: a/web's Deployment carries the injected sidecar.
    web = api.get("Deployment", "a", "web")
    assert web is not None
    names = [c["name"] for c in web["spec"]["template"]["spec"].get("initContainers", [])]
    assert "weft-sidecar" in names, names
