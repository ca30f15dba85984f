"""Properties of the compiler over generated meshes (hypothesis).

- `weft reach` agrees, for every pair, with what fastpath itself decides on concrete requests:
  the compiled ProxyConfig goes through the extension to `authz::decide`, the function the
  sidecar calls on every request (`_native.authorize`), not a copy of it; and with outbound
  scoping and NetworkPolicies;
- compile is deterministic, whatever the order and files the documents are written in;
- adding an allow policy never removes reachability.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reconciler import _native, compiler, intent
from reconciler.compiler import reach
from reconciler.intent.files import IntentFile, Snapshot

NAMESPACES = ["n1", "n2", "n3"]
METHODS = ["GET", "POST", "PUT"]
PATHS = ["/a", "/b/*"]
# Every method x path a condition can name, plus requests no condition names.
PROBES = [(m, p) for m in [*METHODS, "DELETE"] for p in ["/a", "/b/x", "/zz"]]
RANK = {"deny": 0, "conditional": 1, "allow": 2}

Doc = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Mesh:
    documents: tuple[Doc, ...]
    services: tuple[tuple[str, str], ...]


def _doc(kind: str, name: str, namespace: str | None, spec: Doc) -> Doc:
    meta: Doc = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": "weft.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


@st.composite
def meshes(draw: st.DrawFn) -> Mesh:
    default = draw(st.sampled_from(["deny", "allow"]))
    docs: list[Doc] = [
        _doc("Mesh", "mesh", None, {"trustDomain": "prop.local", "defaultPolicy": default})
    ]
    namespaces = NAMESPACES[: draw(st.integers(1, 3))]
    services: list[tuple[str, str]] = []
    for ns in namespaces:
        for i in range(draw(st.integers(1, 3))):
            ports = [{"name": "http", "port": 8080}]
            if draw(st.booleans()):
                ports.append({"name": "db", "port": 5432, "protocol": "tcp"})
            docs.append(_doc("Service", f"s{i}", ns, {"ports": ports}))
            services.append((ns, f"s{i}"))
    for k in range(draw(st.integers(0, 6))):
        docs.append(draw(policies(services, f"p{k}")))
    return Mesh(tuple(docs), tuple(services))


@st.composite
def policies(
    draw: st.DrawFn, services: list[tuple[str, str]], name: str, action: str | None = None
) -> Doc:
    ns = draw(st.sampled_from(sorted({n for n, _ in services})))
    action = action or draw(st.sampled_from(["allow", "deny"]))
    local = [s for n, s in services if n == ns]
    spec: Doc = {"action": action, "from": []}
    if draw(st.booleans()):
        spec["to"] = {"services": draw(st.lists(st.sampled_from(local), min_size=1, unique=True))}
    sources = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["namespaces", "services"]))
        if kind == "namespaces":
            choices = [*sorted({n for n, _ in services}), "*"]
            sources.append(
                {"namespaces": draw(st.lists(st.sampled_from(choices), min_size=1, unique=True))}
            )
        else:
            refs = [f"{n}/{s}" for n, s in services]
            sources.append(
                {"services": draw(st.lists(st.sampled_from(refs), min_size=1, unique=True))}
            )
    spec["from"] = sources
    # Conditions only on allows: a conditional deny would make "conditional" imprecise by design.
    if action == "allow" and draw(st.booleans()):
        spec.setdefault("to", {})["ports"] = ["http"]
        when: Doc = {}
        if draw(st.booleans()):
            when["methods"] = draw(st.lists(st.sampled_from(METHODS), min_size=1, unique=True))
        if not when or draw(st.booleans()):
            when["paths"] = draw(st.lists(st.sampled_from(PATHS), min_size=1, unique=True))
        spec["when"] = when
    return _doc("AccessPolicy", name, ns, spec)


def snapshot(docs: tuple[Doc, ...] | list[Doc], files: int = 1) -> Snapshot:
    chunks: list[list[Doc]] = [[] for _ in range(files)]
    for i, d in enumerate(docs):
        chunks[i % files].append(d)
    return Snapshot(
        "prop@sha1:" + "0" * 40,
        tuple(
            IntentFile(f"f{i}.yaml", yaml.safe_dump_all(chunk, sort_keys=False).encode())
            for i, chunk in enumerate(chunks)
            if chunk
        ),
    )


def loaded(docs: tuple[Doc, ...] | list[Doc], files: int = 1) -> intent.Intent | None:
    mesh, _ = intent.check(snapshot(docs, files))
    return mesh


# 150 generated meshes per property in `make test`; `make test-fast` asks for fewer, so the proof
# stays in the edit-test loop at a fraction of the time.
EXAMPLES = int(os.environ.get("WEFT_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(meshes())
def test_reach_is_what_the_sidecars_enforce(generated: Mesh) -> None:
    mesh = loaded(generated.documents)
    assume(mesh is not None)
    assert mesh is not None
    desired = compiler.compile(mesh)
    texts = {key: c.to_json() for key, c in desired.proxy_configs.items()}
    configs = {key: json.loads(text) for key, text in texts.items()}
    # What may name a decision: a policy of the mesh, or its default.
    deciders = {p.ref for p in mesh.policies} | {
        f"Mesh/{mesh.mesh.metadata.name} defaultPolicy: {mesh.spec.default_policy}"
    }
    for cell in reach.matrix(mesh):
        src_ns, src_name = cell.source.split("/")
        dst = (cell.destination.split("/")[0], cell.destination.split("/")[1])
        spiffe = mesh.identity_of(mesh.services[(src_ns, src_name)])
        port = next(p for p in configs[dst]["inbound"] if p["name"] == cell.port)
        probes = [(None, None)] if port["protocol"] == "tcp" else PROBES
        decisions = {
            _native.authorize(texts[dst], cell.port_number, spiffe, m, p) for m, p in probes
        }
        outcomes = {allowed for allowed, _ in decisions}
        expected = {"allow": {True}, "deny": {False}, "conditional": {True, False}}
        assert outcomes == expected[cell.verdict.decision], cell
        assert {policy for _, policy in decisions} <= deciders, (cell, decisions)
        if cell.verdict.decision == "deny" and cell.verdict.policies[0].startswith("Mesh/"):
            # Denied by the default in reach: no rule of fastpath's may match either, and the
            # 403 names the default.
            assert {policy for _, policy in decisions} == {cell.verdict.policies[0]}, cell

        # The source's sidecar knows the route exactly when the destination may be reached.
        outbound = configs[(src_ns, src_name)]["outbound"]
        listed = any(
            h["service"] == cell.destination and h["port"] == cell.port_number
            for h in outbound["http"] + outbound["tcp"]
        )
        assert listed == (cell.verdict.decision != "deny"), cell

        # L3 admits exactly the callers L7 may let through.
        netpol = next(
            n
            for n in desired.network_policies
            if (n["metadata"]["namespace"], n["metadata"]["name"]) == (dst[0], f"{dst[1]}-weft")
        )
        assert admitted_by(netpol, src_ns, {"app": src_name}, cell.port_number) == (
            cell.verdict.decision != "deny"
        ), cell


def admitted_by(netpol: Doc, namespace: str, labels: dict[str, str], port: int) -> bool:
    for rule in netpol["spec"]["ingress"]:
        if not any(p["port"] == port for p in rule["ports"]):
            continue
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            ns_ok = peer["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": namespace
            }
            pod = peer.get("podSelector", {"matchLabels": {}})["matchLabels"]
            if ns_ok and all(labels.get(k) == v for k, v in pod.items()):
                return True
    return False


@SETTINGS
@given(meshes(), st.randoms(use_true_random=False), st.integers(1, 4))
def test_compile_is_deterministic_in_any_layout(generated: Mesh, rng: Any, files: int) -> None:
    mesh = loaded(generated.documents)
    assume(mesh is not None)
    assert mesh is not None
    shuffled = list(generated.documents)
    rng.shuffle(shuffled)
    other = loaded(shuffled, files)
    assert other is not None
    assert compiler.files(compiler.compile(mesh)) == compiler.files(compiler.compile(other))


@SETTINGS
@given(st.data())
def test_adding_an_allow_never_removes_reachability(data: st.DataObject) -> None:
    generated = data.draw(meshes())
    before = loaded(generated.documents)
    assume(before is not None)
    assert before is not None
    extra = data.draw(policies(list(generated.services), "added", action="allow"))
    after = loaded([*generated.documents, extra])
    assume(after is not None)
    assert after is not None
    old = {(c.source, c.destination, c.port): c.verdict.decision for c in reach.matrix(before)}
    for cell in reach.matrix(after):
        was = old[(cell.source, cell.destination, cell.port)]
        assert RANK[cell.verdict.decision] >= RANK[was], (cell, was)


def test_authorize_is_the_sidecars_decision_and_refuses_what_it_would_not_serve(
    template: Path,
) -> None:
    """The binding the property relies on: the template's b/api admits a/web by its policy, a
    caller without identity gets the default, and what the sidecar never decides is an error."""
    mesh = loaded_dir(template)
    config = compiler.compile(mesh).proxy_configs[("b", "api")].to_json()
    td = mesh.spec.trust_domain
    web = f"spiffe://{td}/ns/a/sa/web"
    assert _native.authorize(config, 8080, web, "GET", "/") == (True, "b/allow-from-a-and-c")
    assert _native.authorize(config, 8080, None, "GET", "/") == (
        False,
        "Mesh/mesh defaultPolicy: deny",
    )
    with pytest.raises(_native.ConfigError, match="no inbound port 1 "):
        _native.authorize(config, 1, web, "GET", "/")
    with pytest.raises(ValueError, match="not a workload SPIFFE ID of trust domain"):
        _native.authorize(config, 8080, "spiffe://elsewhere/ns/a/sa/web", "GET", "/")
    with pytest.raises(_native.ConfigError, match="schemaVersion"):
        _native.authorize("{}", 8080, None)


def loaded_dir(path: Path) -> intent.Intent:
    mesh, diagnostics = intent.check(intent.files.from_directory(path))
    assert mesh is not None, diagnostics
    return mesh
