"""deploy/ against a real API server: the reconciler runs with exactly its ServiceAccount's
permissions, has nothing more, and two replicas elect one writer that hands over when killed.

The reconcilers here are real `weft run --target kubernetes` processes following a real git
daemon, authenticated with a token the API server issued to `weft-system/weft-reconciler`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.targets.kubernetes import KubernetesTarget
from tests.gitservers import GitDaemon, Upstream
from tests.kube import ControlPlane, wait_for
from tests.kubeapps import desired_template

SA = "system:serviceaccount:weft-system:weft-reconciler"
IMAGE = "registry.example/weft:test"
ROOT = Path(__file__).resolve().parent.parent


def reconciler_token(kube: ControlPlane) -> str:
    return kube.token_for("weft-system", "weft-reconciler")


def test_the_service_account_can_apply_the_template(template_cluster: ControlPlane) -> None:
    api = template_cluster.api_as(reconciler_token(template_cluster))
    target = KubernetesTarget(api, image=IMAGE)
    desired = desired_template()
    plan = target.plan(desired, target.observe())
    target.apply(plan)
    target.prune(plan)
    admin = template_cluster.admin()
    assert admin.get("ConfigMap", "b", "api-weft-sidecar") is not None
    assert admin.get("Secret", "c", "weft-identity-ledger") is not None
    web = admin.get("Deployment", "a", "web")
    assert web is not None
    assert "initContainers" in web["spec"]["template"]["spec"]
    # Status and its Event, through the same token.
    target.report({"conditions": [{"type": "Ready", "status": True, "reason": "Succeeded"}]})
    assert admin.get("ConfigMap", "weft-system", "weft-status") is not None
    events = list(admin.list("Event", namespace="weft-system"))
    assert any(e["reason"] == "Succeeded" for e in events)


@pytest.mark.parametrize(
    ("verb", "resource", "namespace"),
    [
        # Deployments it creates and deletes: a Gateway's, its own whole (deploy/10-rbac.yaml).
        ("create", "statefulsets", "a"),
        ("delete", "daemonsets", "a"),
        ("update", "deployments", "a"),
        ("patch", "pods", "a"),
        ("create", "pods", "a"),
        ("delete", "namespaces", ""),
        ("create", "clusterrolebindings", ""),
        ("update", "leases", "kube-system"),
        ("create", "events", "a"),
        ("create", "serviceaccounts/token", "a"),
        ("escalate", "clusterroles", ""),
    ],
)
def test_the_service_account_has_nothing_more(
    template_cluster: ControlPlane, verb: str, resource: str, namespace: str
) -> None:
    # kubectl reads `kind/name`: a subresource must be asked for as one.
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, kind, f"--as={SA}", *([f"--subresource={sub}"] if sub else [])]
    args += ["-n", namespace] if namespace else []
    answer = template_cluster.kubectl(*args, check=False).strip()
    assert answer == "no"


def test_a_missing_permission_fails_the_reconcile(template_cluster: ControlPlane) -> None:
    """Take away one verb: the reconcile fails with the API's 403, nothing is escalated."""
    admin = template_cluster.admin()
    role = admin.request("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/weft-reconciler")
    role["rules"] = [r for r in role["rules"] if "networkpolicies" not in r["resources"]]
    admin.request(
        "PUT", "/apis/rbac.authorization.k8s.io/v1/clusterroles/weft-reconciler", body=role
    )
    target = KubernetesTarget(
        template_cluster.api_as(reconciler_token(template_cluster)), image=IMAGE
    )
    with pytest.raises(Exception, match="networkpolicies"):
        target.plan(desired_template(), target.observe())
    template_cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "10-rbac.yaml"))


class Replica:
    def __init__(self, kube: ControlPlane, repo: str, tmp: Path, name: str, token: str) -> None:
        self.name = name
        self.kubeconfig = kube.kubeconfig_for(token, f"replica-{name}")
        self.log_path = tmp / f"{name}.log"
        with self.log_path.open("w") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler.cli",
                    "run",
                    "--target",
                    "kubernetes",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--image",
                    IMAGE,
                    "--repo",
                    repo,
                    "--state-dir",
                    str(tmp / f"state-{name}"),
                    "--poll",
                    "1",
                    "--lease-duration",
                    "6",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "POD_NAME": name},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Upstream, GitDaemon]]:
    up = Upstream(tmp_path / "git", "mesh.git")
    files = {
        str(p.relative_to(ROOT / "mesh-repo-template")): p.read_text()
        for p in (ROOT / "mesh-repo-template").rglob("*.yaml")
    }
    up.commit(files, "seed")
    daemon = GitDaemon(tmp_path / "git")
    try:
        yield up, daemon
    finally:
        daemon.close()


def _holder(kube: ControlPlane) -> str:
    lease = kube.admin().get("Lease", "weft-system", "weft-reconciler")
    return str((lease or {}).get("spec", {}).get("holderIdentity") or "")


def _applied(kube: ControlPlane) -> str:
    cm = kube.admin().get("ConfigMap", "weft-system", "weft-status")
    if cm is None:
        return ""
    return str(json.loads(cm["data"]["status.json"]).get("lastAppliedRevision") or "")


def test_two_replicas_one_writer_and_handover(
    template_cluster: ControlPlane, upstream: tuple[Upstream, GitDaemon], tmp_path: Path
) -> None:
    up, daemon = upstream
    token = reconciler_token(template_cluster)
    first = Replica(template_cluster, daemon.url(up), tmp_path, "one", token)
    wait_for(lambda: _holder(template_cluster) == "one", timeout=30)
    second = Replica(template_cluster, daemon.url(up), tmp_path, "two", token)
    try:
        wait_for(lambda: _applied(template_cluster).endswith(up_head(up)), timeout=60)
        time.sleep(2)  # two's candidate loop has run a few times by now
        assert _holder(template_cluster) == "one"
        assert "is now the leader" not in second.log()
        weft_writers = _writers(template_cluster)
        assert weft_writers <= {"weft"}, weft_writers

        first.kill()  # no clean release: two must wait out the Lease, then take over
        killed = time.monotonic()
        wait_for(lambda: _holder(template_cluster) == "two", timeout=30)
        handover = time.monotonic() - killed
        assert handover < 6 + 2 + 5, f"handover took {handover:.1f} s"

        # The new leader follows the repository: a commit that removes c/db is applied by two.
        services = (up.work / "c" / "services.yaml").read_text()
        policies = (up.work / "c" / "policies.yaml").read_text()
        sha = up.commit(
            {
                "c/services.yaml": "---".join(
                    d for d in services.split("---") if "name: db" not in d
                ),
                "c/policies.yaml": "---".join(
                    d for d in policies.split("---") if "services: [db]" not in d
                ),
            },
            "drop c/db",
        )
        wait_for(lambda: _applied(template_cluster).endswith(sha), timeout=60)
        assert template_cluster.admin().get("ConfigMap", "c", "db-weft-sidecar") is None
    finally:
        first.kill()
        second.stop()
    assert second.proc.returncode == 0, second.log()[-2000:]


def up_head(up: Upstream) -> str:
    out = subprocess.run(
        ["git", "-C", str(up.work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _writers(kube: ControlPlane) -> set[str]:
    """Field managers other than the app team's on the template's workloads."""
    found: set[str] = set()
    for kind in ("Deployment", "StatefulSet"):
        for ns in ("a", "b", "c"):
            for obj in kube.admin().list(kind, namespace=ns):
                found |= {m["manager"] for m in obj["metadata"]["managedFields"]}
    return found - {"app-team"}
