"""Signed revisions on the Kubernetes target, against a real kube-apiserver and a real git daemon:
an unsigned revision writes nothing to the cluster, the last good one stays, and the
`weft-status` ConfigMap and a Warning Event name the commit, the signer and the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reconciler import loop, sources
from reconciler.gitsource.signatures import TrustedKeys
from reconciler.targets.kubernetes import KubernetesTarget
from tests.conftest import TEMPLATE
from tests.gitservers import GitDaemon, Upstream
from tests.kube import ControlPlane
from tests.kubeapps import TEMPLATE_NAMESPACES, resource_versions
from tests.signing import SshKey, sign_commit

IMAGE = "registry.example/weft:test"


def test_an_unsigned_revision_writes_nothing_and_the_status_says_why(
    template_cluster: ControlPlane, tmp_path: Path
) -> None:
    bob = SshKey(tmp_path, "bob")
    allowed = tmp_path / "trusted" / "allowed_signers"
    allowed.parent.mkdir()
    allowed.write_text(bob.allowed_signer())
    served = tmp_path / "served"
    served.mkdir()
    upstream = Upstream(served, "mesh.git")
    shutil.copytree(TEMPLATE, upstream.work, dirs_exist_ok=True)
    good = sign_commit(upstream, bob, {}, "the template, signed")
    api = template_cluster.admin()
    with GitDaemon(served) as daemon:
        source = sources.open_source(
            daemon.url(upstream), "main", tmp_path / "cache", TrustedKeys.load([allowed.parent])
        )
        target = KubernetesTarget(api, image=IMAGE)
        rec = loop.Reconciler(source, target, tmp_path / "status.json")
        first = source.fetch()
        assert first is not None
        assert good in first
        assert rec.reconcile(first) is True
        before = resource_versions(api, TEMPLATE_NAMESPACES)

        policies = upstream.work / "b" / "policies.yaml"
        unsigned = sign_commit(
            upstream, None, {"b/policies.yaml": policies.read_text() + "# nobody signed this\n"}
        )
        second = source.fetch()
        assert second is not None
        assert rec.reconcile(second) is False

    assert resource_versions(api, TEMPLATE_NAMESPACES) == before  # nothing written
    published = api.get("ConfigMap", "weft-system", "weft-status")
    assert published is not None
    status = json.loads(published["data"]["status.json"])
    assert status["lastAppliedRevision"] == first
    assert status["lastAttemptedRevision"] == second
    assert status["signature"]["commit"] == unsigned
    assert status["signature"]["reason"] == "unsigned"
    assert status["signature"]["signer"] is None
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == (True, "UntrustedRevision")
    assert unsigned in stalled["message"]
    assert "signed by nobody" in stalled["message"]
    events = [
        e for e in api.list("Event", namespace="weft-system") if e["reason"] == "UntrustedRevision"
    ]
    assert events
    assert events[-1]["type"] == "Warning"
    assert unsigned in events[-1]["message"]
