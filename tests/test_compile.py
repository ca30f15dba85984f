"""The compiler's output for the template: golden files, determinism, and what it promises."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from reconciler import compiler
from tests.conftest import MESH, load, write_repo

GOLDEN = Path(__file__).parent / "golden" / "template"
REVISION = "main@sha1:0000000000000000000000000000000000000000"


def compiled(root: Path) -> dict[str, str]:
    return compiler.files(compiler.compile(load(root, REVISION)))


def test_template_matches_golden_files(template: Path) -> None:
    """ProxyConfigs, NetworkPolicies and the rest, byte for byte.

    After an intended change: WEFT_UPDATE_GOLDEN=1 pytest tests/test_compile.py, then review
    the diff of tests/golden like any other code change.
    """
    out = compiled(template)
    if os.environ.get("WEFT_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for rel, text in out.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_text(text)
    golden = {
        p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()
    }
    assert sorted(out) == sorted(golden)
    for rel, text in out.items():
        assert text == golden[rel], f"{rel} differs from tests/golden/template/{rel}"


def test_compile_is_byte_identical_across_runs_and_layouts(template: Path, tmp_path: Path) -> None:
    first = compiled(template)
    assert compiled(template) == first
    # The same documents in other files and folders compile to the same output.
    docs = [d for f in sorted(template.rglob("*.yaml")) for d in f.read_text().split("\n---\n")]
    shuffled = tmp_path / "shuffled"
    for i, doc in enumerate(reversed(docs)):
        write_repo(shuffled, {f"z{i % 3}/doc-{i}.yml": doc})
    assert compiled(shuffled) == first


def test_seed_scenario_outbound_is_scoped_by_policy(template: Path) -> None:
    out = compiled(template)
    web = json.loads(out["proxyconfigs/a/web.json"])
    reachable = {h["service"] for h in web["outbound"]["http"]} | {
        t["service"] for t in web["outbound"]["tcp"]
    }
    assert reachable == {"b/api"}, "a may call b, never c"
    api = json.loads(out["proxyconfigs/b/api.json"])
    assert {h["service"] for h in api["outbound"]["http"]} == {"a/web", "a/worker", "c/ledger"}
    assert [t["service"] for t in api["outbound"]["tcp"]] == ["b/cache"]
    assert [e["host"] for e in api["outbound"]["egress"]] == ["api.payments.example"]
    assert web["outbound"]["egress"] == []


def test_upstream_identity_and_endpoints_are_pinned_per_cluster(template: Path) -> None:
    web = json.loads(compiled(template)["proxyconfigs/a/web.json"])
    clusters = {c["name"]: c for c in web["outbound"]["clusters"]}
    assert set(clusters) == {"b/api:8080/v1", "b/api:8080/v2"}
    v2 = clusters["b/api:8080/v2"]
    assert v2["spiffeId"] == "spiffe://weft.local/ns/b/sa/api"
    assert v2["endpoints"] == {"dns": "api-v2-weft.b.svc.cluster.local", "port": 8081}
    hosts = web["outbound"]["http"][0]
    assert "api" not in hosts["hostnames"], "the short name resolves only inside namespace b"
    assert hosts["routes"][-1]["backends"] == [
        {"cluster": "b/api:8080/v1", "weight": 90},
        {"cluster": "b/api:8080/v2", "weight": 10},
    ]


def test_inbound_rules_put_denies_first_and_carry_the_default(template: Path) -> None:
    web = json.loads(compiled(template)["proxyconfigs/a/web.json"])
    (port,) = web["inbound"]
    assert [(r["action"], r["policy"]) for r in port["rules"]] == [
        ("DENY", "a/never-from-c"),
        ("ALLOW", "a/allow-from-b"),
    ]
    assert port["defaultAction"] == "DENY"
    ledger = json.loads(compiled(template)["proxyconfigs/c/ledger.json"])
    allow = next(r for r in ledger["inbound"][0]["rules"] if r["action"] == "ALLOW")
    assert allow["methods"] == ["GET", "POST"]
    assert allow["paths"] == [{"exact": "/entries"}, {"prefix": "/entries/"}]


def test_network_policies_admit_exactly_the_allowed_callers(template: Path) -> None:
    out = compiled(template)
    ledger = yaml.safe_load(out["kubernetes/c/networkpolicy-ledger-weft.yaml"])
    (rule,) = ledger["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}
    ]
    cache = yaml.safe_load(out["kubernetes/b/networkpolicy-cache-weft.yaml"])
    assert cache["spec"]["ingress"][0]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
            "podSelector": {"matchLabels": {"app": "api"}},
        }
    ]
    web = yaml.safe_load(out["kubernetes/a/networkpolicy-web-weft.yaml"])
    assert web["spec"]["podSelector"] == {"matchLabels": {"app": "web"}}
    # c is denied, so only b's namespace appears
    assert [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in web["spec"]["ingress"][0]["from"]
    ] == ["b"]


def test_nobody_reaches_a_service_gets_an_ingress_deny_all(template: Path) -> None:
    db = yaml.safe_load(compiled(template)["kubernetes/c/networkpolicy-db-weft.yaml"])
    assert db["spec"]["ingress"][0]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "c"}},
            "podSelector": {"matchLabels": {"app": "ledger"}},
        }
    ]
    worker = yaml.safe_load(compiled(template)["kubernetes/a/networkpolicy-worker-weft.yaml"])
    assert worker["spec"]["policyTypes"] == ["Ingress"]
    assert worker["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "b"
    }


def test_permissive_default_allow_leaves_ports_open_to_plaintext_callers(tmp_path: Path) -> None:
    root = write_repo(
        tmp_path,
        {
            "mesh.yaml": MESH.replace(
                "{trustDomain: test.local}", "{mtls: PERMISSIVE, defaultPolicy: allow}"
            ),
            "s.yaml": """\
            apiVersion: weft.dev/v1alpha1
            kind: Service
            metadata: {name: legacy, namespace: x}
            spec: {ports: [{name: http, port: 80}]}
            """,
        },
    )
    out = compiled(root)
    netpol = yaml.safe_load(out["kubernetes/x/networkpolicy-legacy-weft.yaml"])
    assert netpol["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 80}]}]
    config = json.loads(out["proxyconfigs/x/legacy.json"])
    assert config["mtls"] == "PERMISSIVE"
    assert config["inbound"][0]["defaultAction"] == "ALLOW"


def test_identities_cover_each_service_account_once(template: Path) -> None:
    identities = json.loads(compiled(template)["identities.json"])
    assert [i["spiffeId"] for i in identities] == [
        "spiffe://weft.local/ns/a/sa/web",
        "spiffe://weft.local/ns/a/sa/worker",
        "spiffe://weft.local/ns/b/sa/api",
        "spiffe://weft.local/ns/b/sa/cache",
        "spiffe://weft.local/ns/c/sa/db",
        "spiffe://weft.local/ns/c/sa/ledger",
    ]
    assert not any("key" in k.lower() for i in identities for k in i), "no key material in outputs"


def test_write_is_atomic_and_refuses_foreign_directories(template: Path, tmp_path: Path) -> None:
    desired = compiler.compile(load(template, REVISION))
    out = tmp_path / "out"
    compiler.write(desired, out)
    (out / "stale.json").write_text("{}")
    compiler.write(desired, out)
    assert not (out / "stale.json").exists(), "a recompile replaces the whole tree"
    assert (out / "revision").read_text() == REVISION + "\n"
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        compiler.write(desired, foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"
