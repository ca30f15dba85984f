"""Resilience settings from intent to ProxyConfig: what each compiles to, what validation says,
and that none of them changes who may reach whom (`weft reach`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler import compiler, intent
from reconciler.compiler import reach
from reconciler.intent import Severity
from tests.conftest import write_repo

MESH = """\
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: r.local, defaultPolicy: deny}
"""
SERVICES = """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: a}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: b}
spec:
  ports: [{name: http, port: 8080}, {name: grpc, port: 9090, protocol: grpc}]
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  RESILIENCE
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shadow, namespace: b}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: db, namespace: c}
spec:
  ports: [{name: pg, port: 5432, protocol: tcp}]
  outlierDetection: {consecutive5xx: 2}
"""
POLICIES = """\
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-a, namespace: b}
spec: {from: [{namespaces: [a]}]}
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-a, namespace: c}
spec: {from: [{namespaces: [a]}]}
"""
ROUTE = """\
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: api, namespace: b}
spec:
  host: api.b
  port: http
  rules:
    - matches: [{headers: [{name: x-test, present: true}]}]
      backends: [{subset: v1}]
      fault:
        delay: {fixed: 250ms, percent: 50}
        abort: {httpStatus: 418, percent: 5}
        headers: [{name: X-Chaos, exact: "yes"}]
    - backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
      mirror: {service: shadow, percent: 5}
"""
RESILIENCE = (
    "circuitBreaker: {maxRequests: 100, maxRetries: 3}\n"
    "  outlierDetection: {consecutiveGatewayErrors: 4, baseEjectionTime: 10s}"
)


def build(root: Path, resilient: bool) -> tuple[intent.Intent, dict[str, Any]]:
    files = {
        "mesh.yaml": MESH,
        "services.yaml": SERVICES.replace("RESILIENCE", RESILIENCE if resilient else ""),
        "policies.yaml": POLICIES,
    }
    if resilient:
        files["routes.yaml"] = ROUTE
    mesh = intent.load(intent.files.from_directory(write_repo(root, files)))
    configs = compiler.compile(mesh).proxy_configs
    return mesh, configs[("a", "web")].as_dict()


def test_route_and_service_settings_compile_into_the_callers_config(tmp_path: Path) -> None:
    _, web = build(tmp_path, resilient=True)
    host = next(h for h in web["outbound"]["http"] if h["service"] == "b/api" and h["port"] == 8080)
    faulted, mirrored = host["routes"][0], host["routes"][1]
    assert faulted["fault"] == {
        "delay": {"fixedMs": 250, "percent": 50.0},
        "abort": {"httpStatus": 418, "percent": 5.0},
        "headers": [{"name": "x-chaos", "exact": "yes"}],
    }
    assert mirrored["mirror"] == {"cluster": "b/shadow:8080", "percent": 5.0}
    clusters = {c["name"]: c for c in web["outbound"]["clusters"]}
    assert "b/shadow:8080" in clusters, "a mirror to another service brings its cluster"
    api = clusters["b/api:8080/v1"]
    assert api["circuitBreaker"] == {"maxRequests": 100, "maxRetries": 3}
    assert api["outlierDetection"] == {
        "consecutive5xx": 5,
        "consecutiveGatewayErrors": 4,
        "intervalMs": 10_000,
        "baseEjectionTimeMs": 10_000,
        "maxEjectionTimeMs": 300_000,
        "maxEjectionPercent": 10.0,
        "panicThresholdPercent": 0.0,
    }
    assert "circuitBreaker" not in clusters["b/shadow:8080"]
    assert "outlierDetection" not in clusters["c/db:5432"], "tcp clusters get none"


def test_a_tcp_port_is_warned_to_go_unwatched(tmp_path: Path) -> None:
    write_repo(tmp_path, {"mesh.yaml": MESH, "services.yaml": SERVICES.replace("RESILIENCE", "")})
    _, diagnostics = intent.check(intent.files.from_directory(tmp_path))
    warnings = [d for d in diagnostics if d.severity == Severity.WARNING]
    assert [(d.position.file, d.position.line, d.message) for d in warnings] == [
        (
            "services.yaml",
            24,
            "outlierDetection applies to HTTP ports only: tcp port pg of c/db is neither "
            "limited nor watched",
        )
    ]


def test_reach_is_unchanged_by_resilience_settings(tmp_path: Path) -> None:
    plain, _ = build(tmp_path / "plain", resilient=False)
    resilient, _ = build(tmp_path / "resilient", resilient=True)
    assert [c.as_json() for c in reach.matrix(plain)] == [
        c.as_json() for c in reach.matrix(resilient)
    ]
