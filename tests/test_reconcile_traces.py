"""One trace per reconcile, read back from a real Jaeger; and the reconciler's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pygit2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from reconciler import localrepo, loop, telemetry
from reconciler.targets.local.target import LocalTarget
from tests import sidecars
from tests.conftest import write_repo
from tests.jaeger import Jaeger

INTENT = {
    "mesh.yaml": sidecars.mesh_yaml("trace.local"),
    "s.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: Service
        metadata: {name: api, namespace: b}
        spec: {ports: [{name: http, port: 8080}]}
        """,
}


def commit(repo: Path, message: str) -> None:
    r = pygit2.Repository(str(repo))
    r.index.add_all()
    r.index.write()
    sig = pygit2.Signature("t", "t@localhost")
    parents = [] if r.head_is_unborn else [r.head.target]
    r.create_commit("HEAD", sig, sig, message, r.index.write_tree(), parents)


def test_a_reconcile_is_one_trace_with_a_span_per_stage_and_object(
    jaeger: Jaeger, tmp_path: Path
) -> None:
    repo = write_repo(tmp_path / "repo", INTENT)
    pygit2.init_repository(str(repo), initial_head="main")
    commit(repo, "seed")
    provider = telemetry.configure(OTLPSpanExporter(endpoint=f"{jaeger.otlp_http}/v1/traces"))
    assert provider is not None
    target = LocalTarget(tmp_path / "state")
    try:
        source = localrepo.LocalRepoSource(repo)
        rec = loop.Reconciler(source, target, tmp_path / "state" / "status.json")
        revision = source.fetch()
        assert revision is not None
        assert rec.reconcile(revision, (1, 2)) is True
        # A broken revision: refused, and its trace says so.
        (repo / "s.yaml").write_text(
            (repo / "s.yaml").read_text().replace("port: 8080", "port: 80800")
        )
        commit(repo, "break")
        broken = source.fetch()
        assert broken is not None
        assert rec.reconcile(broken) is False
        provider.force_flush()
    finally:
        target.close()
        provider.shutdown()

    by_revision: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}

    def collect() -> bool:
        for t in jaeger.traces(telemetry.SERVICE_NAME):
            root = next((s for s in t["spans"] if s["operationName"] == "reconcile"), None)
            if root is not None:
                tags = {tag["key"]: tag["value"] for tag in root["tags"]}
                by_revision[tags["weft.revision"]] = (t["traceID"], t, tags)
        return (
            revision in by_revision
            and broken in by_revision
            and len(by_revision[revision][1]["spans"]) >= 9
        )

    sidecars.wait_until(collect, timeout=20)
    _, applied, _ = by_revision[revision]
    names = sorted(s["operationName"] for s in applied["spans"])
    assert names == sorted(
        [
            "reconcile",
            "fetch",
            "verify",  # signatures not required here: the span says so
            "validate",
            "compile",
            "plan",
            "apply",
            "prune",
            "apply config/b/api/default",
            "apply sidecar/b/api/default",
        ]
    )
    root_id = next(s["spanID"] for s in applied["spans"] if s["operationName"] == "reconcile")
    for span in applied["spans"]:
        if span["operationName"] in ("fetch", "validate", "compile", "plan", "apply", "prune"):
            assert span["references"][0]["spanID"] == root_id
    _, refused, tags = by_revision[broken]
    assert tags.get("otel.status_code") == "ERROR"
    refused_names = sorted(s["operationName"] for s in refused["spans"])
    assert refused_names == ["reconcile", "validate", "verify"]

    text = rec.metrics.render()
    assert 'weft_reconciles_total{result="applied"} 1' in text
    assert 'weft_reconciles_total{result="refused"} 1' in text
    assert 'weft_reconcile_errors_total{kind="validation"} 1' in text
    assert "weft_reconcile_duration_seconds_count 2" in text
