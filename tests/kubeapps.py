"""The application side of a cluster for Kubernetes target tests: the template's namespaces, the
workloads its Services select (as an application team would apply them, under its own field
manager), and Weft's own namespace from `deploy/`.

Namespaces a, b and c are the template's, so tests that use them run one at a time against the
session's API server and `template_cluster` removes them (and `weft-system`) afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import compiler, intent
from reconciler.targets.kubernetes import Api, ApiError
from tests.kube import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TEMPLATE = ROOT / "mesh-repo-template"
APP_MANAGER = "app-team"
TEMPLATE_NAMESPACES = ("a", "b", "c")

# (kind, namespace, name, pod labels, service account): what the template's Services select.
WORKLOADS = [
    ("Deployment", "a", "web", {"app": "web"}, "web"),
    ("Deployment", "a", "worker", {"app": "worker"}, "worker"),
    ("Deployment", "b", "api-v1", {"app": "api", "version": "v1"}, "api"),
    ("Deployment", "b", "api-v2", {"app": "api", "version": "v2"}, "api"),
    ("StatefulSet", "b", "cache", {"app": "cache"}, "cache"),
    ("Deployment", "c", "ledger", {"app": "ledger"}, "ledger"),
    ("StatefulSet", "c", "db", {"app": "db"}, "db"),
]


def workload(kind: str, ns: str, name: str, labels: dict[str, str], sa: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": 1,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "serviceAccountName": sa,
                "containers": [
                    {
                        "name": "app",
                        "image": f"registry.example/{name}:1.0",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    }
                ],
            },
        },
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def create_namespace(api: Api, name: str) -> None:
    with contextlib.suppress(ApiError):
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def delete_namespaces(api: Api, names: tuple[str, ...], timeout: float = 90.0) -> None:
    """Delete and wait until they are gone (the namespace controller empties them first)."""
    for name in names:
        with contextlib.suppress(ApiError):
            api.delete("Namespace", None, name)
    deadline = time.monotonic() + timeout
    while any(api.get("Namespace", None, n) is not None for n in names):
        if time.monotonic() > deadline:
            raise AssertionError(f"namespaces {names} not deleted in {timeout:.0f} s")
        time.sleep(0.3)


@pytest.fixture
def template_cluster(kube: ControlPlane) -> Iterator[ControlPlane]:
    """deploy/ applied as the docs say (`kubectl apply -k deploy/`), the template's namespaces
    and its workloads."""
    api = kube.admin()
    delete_namespaces(api, (*TEMPLATE_NAMESPACES, "weft-system"))  # a failed test's leftovers
    kube.kubectl("apply", "-k", str(DEPLOY))
    for ns in TEMPLATE_NAMESPACES:
        create_namespace(api, ns)
    for kind, ns, name, labels, sa in WORKLOADS:
        api.apply(workload(kind, ns, name, labels, sa), manager=APP_MANAGER)
    try:
        yield kube
    finally:
        delete_namespaces(api, (*TEMPLATE_NAMESPACES, "weft-system"))


def desired_template(revision: str = "main@sha1:" + "1" * 40) -> compiler.DesiredState:
    snapshot = dataclasses.replace(intent.files.from_directory(TEMPLATE), revision=revision)
    return compiler.compile(intent.load(snapshot))


def resource_versions(api: Api, namespaces: tuple[str, ...]) -> dict[str, str]:
    """Every object's resourceVersion in these namespaces, for "nothing was written" checks."""
    found: dict[str, str] = {}
    for kind in ("ConfigMap", "Secret", "Service", "NetworkPolicy", "Deployment", "StatefulSet"):
        for ns in namespaces:
            for obj in api.list(kind, namespace=ns):
                found[f"{kind}/{ns}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return found


def diff_creates_then_nothing(
    cluster: ControlPlane, target: Any, root: Path, image: str, refs: Any
) -> None:
    """`weft diff` of the intent in `root`: exit 1 listing a create of each of `refs`, then,
    once `target` reconciled it, exit 0 and "no changes"."""

    def diff() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "diff", "--target", "kubernetes",
             "--kubeconfig", str(cluster.admin_kubeconfig), "--image", image, str(root)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    before = diff()
    assert before.returncode == 1, before.stderr
    for ref in refs:
        assert f"create  {ref}" in before.stdout, before.stdout
    plan = target.plan(compiler.compile(intent.load(intent.files.from_directory(root))),
                       target.observe())  # fmt: skip
    target.apply(plan)
    target.prune(plan)
    after = diff()
    assert after.returncode == 0, after.stdout + after.stderr
    assert "no changes" in after.stdout
