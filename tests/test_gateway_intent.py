"""A Gateway's intent, compiled: listeners as fastpath reads them (HTTP, the redirect, several
certificates, a certificate and client CA from Kubernetes Secrets named by the files a target
mounts them as), wildcard route hostnames, and `weft reach`'s outside → gateway → service rows.
Pure compile: no process runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import cli, compiler
from reconciler.compiler import gateways, reach
from reconciler.compiler import proxyconfig as pc
from tests import sidecars
from tests.conftest import load, write_repo

GATEWAY = """\
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {name: public, namespace: edge}
spec:
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      hosts: ["*.example.com"]
      httpsRedirect: true
    - name: https
      port: 443
      hosts: [shop.example.com, "*.example.com"]
      tls:
        certificates:
          - {secret: shop-tls}
          - {certificateFile: /etc/edge/wild.crt, keyFile: /etc/edge/wild.key}
        clientCaSecret: partners
---
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: shop, namespace: b}
spec:
  host: api
  gateways: [edge/public]
  hostnames: [shop.example.com]
  rules: [{backends: [{}]}]
---
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: rest, namespace: a}
spec:
  host: web
  gateways: [edge/public]
  hostnames: ["*.example.com"]
  rules: [{backends: [{}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-outside, namespace: b}
spec: {from: [{gateways: [edge/public]}]}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_repo(
        tmp_path,
        {
            "mesh.yaml": sidecars.mesh_yaml("gw.local"),
            "services.yaml": sidecars.WEB_AND_API,
            "gateway.yaml": GATEWAY,
        },
    )


def test_listeners_compile_to_files_a_target_mounts_and_the_redirect(root: Path) -> None:
    config = compiler.compile(load(root)).gateway_configs[("edge", "public")]
    http, https = config.gateway or []
    assert http.protocol == "HTTP"
    assert http.certificates == []
    assert http.https_redirect == pc.HttpsRedirect(port=443, status_code=301)
    assert https.certificates == [
        pc.EdgeCertificate(
            certificate_file=f"{pc.GATEWAY_SECRETS_DIR}/shop-tls/tls.crt",
            key_file=f"{pc.GATEWAY_SECRETS_DIR}/shop-tls/tls.key",
            secret="edge/shop-tls",
        ),
        pc.EdgeCertificate(certificate_file="/etc/edge/wild.crt", key_file="/etc/edge/wild.key"),
    ]
    assert https.client_ca_file == f"{pc.GATEWAY_SECRETS_DIR}/partners/ca.crt"
    assert gateways.secrets(config) == ["edge/partners", "edge/shop-tls"]
    # Routes only on the HTTPS listener: the HTTP one redirects everything.
    hosts = {(h.service, h.port): h.hostnames for h in config.outbound.http}
    assert hosts == {("b/api", 443): ["shop.example.com"], ("a/web", 443): ["*.example.com"]}
    # The JSON fastpath reads: no secret content, only where to read it.
    assert "BEGIN" not in config.to_json()


def test_reach_shows_outside_through_the_gateway_to_each_service(root: Path) -> None:
    mesh = load(root)
    entries = {(e.gateway, e.destination, e.port): e for e in reach.entries(mesh)}
    assert entries[("edge/public", "b/api", "http")].verdict.decision == "allow"
    assert entries[("edge/public", "b/api", "http")].verdict.policies == ("b/from-outside",)
    closed = entries[("edge/public", "a/web", "http")].verdict
    assert closed.decision == "deny"
    assert closed.policies == ("Mesh/mesh defaultPolicy: deny",)


def test_the_reach_command_prints_the_edge_rows(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reach", str(root)]) == 0
    out = capsys.readouterr().out
    lines = out.split("from outside, through gateways:\n", 1)[1].splitlines()
    assert lines[0].split() == [
        "outside", "->", "edge/public", "->", "a/web:http",
        "deny", "Mesh/mesh", "defaultPolicy:", "deny", "(hosts", "*.example.com)",
    ]  # fmt: skip
    assert lines[1].split()[4:6] == ["b/api:http", "allow"]
    assert cli.main(["reach", "--json", str(root)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {(g["destination"], g["decision"]) for g in doc["gateways"]} == {
        ("a/web", "deny"),
        ("b/api", "allow"),
    }


def test_validate_warns_of_the_route_no_policy_opens(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["validate", "--strict", str(root)]) != 0
    err = capsys.readouterr().err
    assert "Gateway edge/public routes to a/web:http, which no AccessPolicy opens to it" in err
    assert "b/api" not in err


@pytest.mark.parametrize(
    ("hostnames", "error"),
    [
        ('["example.com"]', "'example.com' is not a host of the bound gateways' listeners"),
        ('["*.com"]', "'*.com' is not a host of the bound gateways' listeners"),
    ],
)
def test_a_route_hostname_must_be_under_a_listener_host(
    tmp_path: Path, hostnames: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = GATEWAY.replace('hostnames: ["*.example.com"]', f"hostnames: {hostnames}")
    write_repo(
        tmp_path,
        {
            "mesh.yaml": sidecars.mesh_yaml("gw.local"),
            "services.yaml": sidecars.WEB_AND_API,
            "gateway.yaml": bad,
        },
    )
    assert cli.main(["validate", str(tmp_path)]) != 0
    assert error in capsys.readouterr().err
