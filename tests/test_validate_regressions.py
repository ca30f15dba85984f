"""Regressions found in review: each once crashed, mis-compiled or let Kubernetes refuse output."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler import compiler, intent
from tests.conftest import MESH, write_repo


def service(name: str, extra: str = "", ports: str = "[{name: http, port: 80}]") -> str:
    return f"""\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: {name}, namespace: x}}
spec:
  ports: {ports}
{extra}"""


def diagnose(tmp_path: Path, **files: str) -> list[str]:
    write_repo(tmp_path, {"mesh.yaml": MESH, **{f"{k}.yaml": v for k, v in files.items()}})
    _, diagnostics = intent.check(intent.files.from_directory(tmp_path))
    return [str(d) for d in diagnostics]


def test_unknown_target_service_with_ports_is_an_error_not_a_crash(tmp_path: Path) -> None:
    policy = """\
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: p, namespace: x}
spec:
  to: {services: [nope], ports: [http]}
  from: [{namespaces: [x]}]
"""
    assert diagnose(tmp_path, s=service("api"), p=policy) == [
        "p.yaml:5:19: error: unknown service x/nope",
        "p.yaml:5:34: error: no targeted service has port 'http'",
    ]


def test_a_rule_with_an_empty_match_sends_everything_to_its_backends(tmp_path: Path) -> None:
    subsets = "  subsets: [{name: v1, labels: {version: v1}}]\n"
    route = """\
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: r, namespace: x}
spec:
  host: api
  rules:
    - matches: [{method: POST}, {}]
      backends: [{subset: v1}]
"""
    write_repo(
        tmp_path,
        {
            "mesh.yaml": MESH.replace("trustDomain: test.local", "defaultPolicy: allow"),
            "s.yaml": service("api", subsets),
            "r.yaml": route,
        },
    )
    desired = compiler.compile(intent.load(intent.files.from_directory(tmp_path)))
    config = json.loads(desired.proxy_configs[("x", "api")].to_json())
    (host,) = config["outbound"]["http"]
    assert [(r["name"], r["matches"]) for r in host["routes"]] == [("x/r#0", [])]
    assert [c["name"] for c in config["outbound"]["clusters"]] == ["x/api:80/v1"]


def test_discovery_service_names_must_not_collide(tmp_path: Path) -> None:
    subsets = "  subsets: [{name: v1, labels: {version: v1}}]\n"
    assert diagnose(tmp_path, a=service("api", subsets), b=service("api-v1")) == [
        "b.yaml:3:18: error: discovery Service x/api-v1-weft is also needed by x/api "
        "(a.yaml:1:1) (hint: rename the service or the subset)",
    ]


def test_an_egress_gateway_must_not_take_a_discovery_services_name(tmp_path: Path) -> None:
    """Callers address egress Gateway x/api as Service x/api-weft, Service x/api's own."""
    egress = """\
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {name: api, namespace: x}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: ExternalService
metadata: {name: e, namespace: x}
spec:
  host: api.example
  ports: [{port: 80, protocol: http}]
  allowedFrom: [{namespaces: [x]}]
  egressGateway: api
"""
    assert diagnose(tmp_path, a=service("api"), g=egress) == [
        "g.yaml:3:18: error: Service x/api-weft, which callers of egress Gateway x/api "
        "address, is also the discovery Service of x/api (a.yaml:1:1) (hint: rename the gateway)",
    ]


def test_a_port_listed_twice_in_one_external_service(tmp_path: Path) -> None:
    ext = """\
apiVersion: weft.dev/v1alpha1
kind: ExternalService
metadata: {name: e, namespace: x}
spec:
  host: api.example
  ports: [{port: 443, protocol: tls}, {port: 443, protocol: tcp}]
  allowedFrom: [{namespaces: [x]}]
"""
    assert diagnose(tmp_path, s=service("api"), e=ext) == [
        "e.yaml:6:46: error: port 443 is listed twice",
    ]


def test_names_kubernetes_would_refuse_are_refused_here(tmp_path: Path) -> None:
    ports = "[{name: a-very-long-port-name, port: 80}, {name: '8080', port: 81}]"
    assert diagnose(tmp_path, s=service("9lives", ports=ports)) == [
        "s.yaml:3:18: error: metadata.name: '9lives' is not a valid name (lowercase letters, "
        "digits and '-', at most 63 characters)",
        "s.yaml:5:18: error: spec.ports[0].name: string should have at most 15 characters",
        "s.yaml:5:59: error: spec.ports[1].name: port name '8080' needs at least one letter",
    ]


def test_subset_labels_cannot_override_the_pod_selector(tmp_path: Path) -> None:
    extra = "  workload: {podSelector: {app: api}}\n  subsets: [{name: v1, labels: {app: other}}]\n"
    assert diagnose(tmp_path, s=service("api", extra)) == [
        "s.yaml:7:38: error: subset label 'app' is already in the workload's podSelector: "
        "a subset narrows the service's pods, it cannot select others",
    ]


def test_a_tab_is_named_as_such_wherever_it_indents(tmp_path: Path) -> None:
    # libyaml's own words for these are "found character that cannot start any token" and
    # "found a tab character that violates indentation"; neither names the field.
    nested = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata:\n\tname: api\n"
    item = service("api", ports="\n    - name: http\n      port: 80\n\t- name: admin")
    assert diagnose(tmp_path, nested=nested, item=item) == [
        "item.yaml:8:1: error: YAML syntax: a tab character indents field 'name'; YAML "
        "indentation must be spaces (hint: replace the tab with spaces)",
        "nested.yaml:4:1: error: YAML syntax: a tab character indents field 'name'; YAML "
        "indentation must be spaces (hint: replace the tab with spaces)",
    ]


def test_a_tab_inside_a_value_is_not_blamed_for_another_syntax_error(tmp_path: Path) -> None:
    text = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: 'a\tb', x: [}\n"
    [message] = diagnose(tmp_path, s=text)
    assert "tab" not in message
    assert message.startswith("s.yaml:3:")


def test_a_mesh_file_a_syntax_error_stops_is_not_also_a_missing_mesh(tmp_path: Path) -> None:
    write_repo(tmp_path, {"mesh.yaml": MESH.replace("spec: {", "spec: {{"), "s.yaml": service("a")})
    _, diagnostics = intent.check(intent.files.from_directory(tmp_path))
    assert [str(d) for d in diagnostics] == [
        "mesh.yaml:5:1: error: YAML syntax: did not find expected ',' or '}'"
    ]
