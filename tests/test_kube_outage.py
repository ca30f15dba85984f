"""The API server goes away in the middle of a reconcile: the reconcile fails cleanly, the status
says so, nothing that was written breaks traffic, and the next attempt converges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler import compiler, localrepo, loop
from reconciler.targets.kubernetes import KubernetesTarget
from reconciler.targets.kubernetes.api import ref_of
from tests.conftest import TEMPLATE, load
from tests.kube import ControlPlane
from tests.kubeapps import WORKLOADS

IMAGE = "registry.example/weft:test"


def test_apiserver_stopped_mid_reconcile(
    template_cluster: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = template_cluster.admin()
    repo = tmp_path / "repo"
    localrepo.init_from_template(TEMPLATE, repo)
    source = localrepo.LocalRepoSource(repo)
    target = KubernetesTarget(api, image=IMAGE)
    rec = loop.Reconciler(source, target, tmp_path / "status.json")

    # The outage is real: the kube-apiserver process is stopped right after the first workload
    # injection is written, while the other injections are in flight.
    real_apply = target.api.apply
    written: list[str] = []

    def apply_then_stop(obj: Any, **kwargs: Any) -> Any:
        answer = real_apply(obj, **kwargs)
        written.append(ref_of(obj))
        if obj["kind"] in ("Deployment", "StatefulSet") and "stopped" not in written:
            written.append("stopped")
            template_cluster.stop_apiserver()
        return answer

    monkeypatch.setattr(target.api, "apply", apply_then_stop)
    revision = source.fetch()
    assert revision is not None
    try:
        assert not rec.reconcile(revision)
        stalled = rec.status.conditions["Stalled"]
        assert stalled.status
        assert stalled.reason == "ApplyFailed"
        assert rec.status.last_applied_revision is None
        assert rec.status.errors
    finally:
        template_cluster.start_apiserver()
    assert "stopped" in written

    # What was written is consistent: a workload that got its sidecar also has the sidecar's
    # config and certificate, because those are applied first.
    injected = 0
    for kind, ns, name, _, sa in WORKLOADS:
        live = api.get(kind, ns, name)
        assert live is not None
        if "initContainers" not in live["spec"]["template"]["spec"]:
            continue
        injected += 1
        service = live["metadata"]["annotations"]["weft.dev/injected-for"]
        assert api.get("ConfigMap", ns, f"{service}-weft-sidecar") is not None
        assert api.get("Secret", ns, f"weft-identity-{sa}") is not None
    assert 1 <= injected < len(WORKLOADS) + 1

    monkeypatch.undo()
    assert rec.reconcile(revision), rec.status.errors
    assert rec.status.last_applied_revision == revision
    assert not rec.status.conditions["Stalled"].status
    for kind, ns, name, _, _ in WORKLOADS:
        live = api.get(kind, ns, name)
        assert live is not None
        assert "initContainers" in live["spec"]["template"]["spec"], f"{kind}/{ns}/{name}"
    again = target.plan(compiler.compile(load(repo, revision)), target.observe())
    assert again.empty, again.changes
