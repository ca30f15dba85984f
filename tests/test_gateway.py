"""The ingress gateway: HTTPS from outside with a certificate from files, routed by a Route bound
to the gateway into a mesh service over mTLS with the gateway's own identity, where the
service's AccessPolicy (`from: gateways`) decides. Real fastpath processes on loopback, curl
as the outside client.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import _native, compiler, intent
from reconciler.targets.local.binding import bind_endpoints
from tests import sidecars
from tests.conftest import write_repo
from tests.pki import CA

TD = "gw.local"
HOST = "shop.example.com"


def mesh_intent(tls_dir: Path) -> dict[str, str]:
    return {
        "mesh.yaml": sidecars.mesh_yaml(TD),
        "services.yaml": sidecars.WEB_AND_API,
        "gateway.yaml": f"""\
            apiVersion: weft.dev/v1alpha1
            kind: Gateway
            metadata: {{name: public, namespace: edge}}
            spec:
              listeners:
                - name: https
                  port: 8443
                  hosts: [{HOST}]
                  tls:
                    certificateFile: {tls_dir}/tls.crt
                    keyFile: {tls_dir}/tls.key
            ---
            apiVersion: weft.dev/v1alpha1
            kind: Route
            metadata: {{name: shop, namespace: b}}
            spec:
              host: api
              gateways: [edge/public]
              hostnames: [{HOST}]
              rules: [{{backends: [{{}}], timeout: 5s}}]
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AccessPolicy
            metadata: {{name: from-outside, namespace: b}}
            spec:
              from: [{{gateways: [edge/public]}}]
              when: {{paths: ["/public/*"]}}
            """,
    }


class Edge:
    def __init__(self, tmp: Path) -> None:
        self.site_ca = CA.create("public web CA")
        site = self.site_ca.issue_server(HOST)
        self.tls_dir = tls_dir = tmp / "edge-tls"
        tls_dir.mkdir()
        (tls_dir / "tls.crt").write_bytes(site.chain)
        (tls_dir / "tls.key").write_bytes(site.key)
        self.client_trust = tmp / "site-ca.pem"
        self.client_trust.write_bytes(self.site_ca.pem)
        root = write_repo(tmp / "intent", mesh_intent(tls_dir))
        snapshot = dataclasses.replace(
            intent.files.from_directory(root), revision="test@sha1:" + "2" * 40
        )
        self.desired = compiler.compile(intent.load(snapshot))
        self.mesh_ca = CA.create()
        self.app = sidecars.EchoServer("api")

    def start(self) -> None:
        self.api = sidecars.start(
            self.desired.proxy_configs[("b", "api")].as_dict(),
            sidecars.identity(self.mesh_ca, TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": self.app.addr}},
        )
        self.gateway = sidecars.start(
            self.desired.gateway_configs[("edge", "public")].as_dict(),
            sidecars.identity(self.mesh_ca, TD, "edge", "public"),
            {"gateway": {"https": "127.0.0.1:0"}},
            {"b/api": [self.api.bound()["inbound:http"]]},
        )
        self.port = int(self.gateway.bound()["gateway:https"].rsplit(":", 1)[1])

    def curl(self, path: str, *extra: str, host: str = HOST) -> tuple[int, str]:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(self.client_trust),
                "--resolve",
                f"{host}:{self.port}:127.0.0.1",
                "-o",
                "-",
                "-w",
                "\n%{http_code} %{http_version}",
                *extra,
                f"https://{host}:{self.port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        body, _, status = out.stdout.rpartition("\n")
        self.http_version = status.split()[1]
        return int(status.split()[0]), body


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    e = Edge(tmp_path)
    with sidecars.serving(e.app):
        e.start()
        try:
            yield e
        finally:
            e.gateway.shutdown(1.0)
            e.api.shutdown(1.0)


def test_outside_reaches_the_service_through_the_gateway_as_its_identity(edge: Edge) -> None:
    status, body = edge.curl("/public/items")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["service"] == "api"
    assert seen["headers"]["x-weft-peer"] == f"spiffe://{TD}/ns/edge/sa/public"
    assert edge.http_version == "2", "curl offers h2 by ALPN, and the gateway takes it"
    status, body = edge.curl("/public/items", "--http1.1")
    assert status == 200, body
    assert edge.http_version == "1.1"


def test_policy_decides_what_the_outside_may_reach(edge: Edge) -> None:
    status, body = edge.curl("/admin")
    assert status == 403, body
    assert f"spiffe://{TD}/ns/edge/sa/public may not GET /admin" in body
    assert edge.app.hits == 0


def test_a_host_no_route_binds_is_refused_at_the_gateway(edge: Edge) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-k",
            "--resolve",
            f"other.example.com:{edge.port}:127.0.0.1",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            f"https://other.example.com:{edge.port}/public/x",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert out.stdout.endswith("\n403"), out.stdout
    assert "has no route" in out.stdout


def test_the_certificate_comes_from_the_files_and_is_verified_by_clients(edge: Edge) -> None:
    out = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{edge.port}",
            "-servername",
            HOST,
            "-CAfile",
            str(edge.client_trust),
            "-verify_return_error",
            "-brief",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert "Verification: OK" in out.stderr, out.stderr
    assert f"CN = {HOST}" in out.stderr or f"CN={HOST}" in out.stderr, out.stderr


def test_a_missing_certificate_refuses_the_config_and_the_old_one_serves(
    edge: Edge, tmp_path: Path
) -> None:
    config = edge.desired.gateway_configs[("edge", "public")].as_dict()
    config["gateway"][0]["certificates"][0]["certificateFile"] = str(tmp_path / "missing.crt")
    config["revision"] = "test@sha1:" + "3" * 40
    with pytest.raises(_native.ConfigError, match=r"gateway listener \"https\".*missing\.crt"):
        edge.gateway.reload(json.dumps(config))
    assert edge.curl("/public/items")[0] == 200


def _served(port: int) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port)))


def test_a_replaced_certificate_is_served_after_a_reload(edge: Edge) -> None:
    first = _served(edge.port)
    renewed = edge.site_ca.issue_server(HOST)
    (edge.tls_dir / "tls.crt").write_bytes(renewed.chain)
    (edge.tls_dir / "tls.key").write_bytes(renewed.key)
    config = edge.desired.gateway_configs[("edge", "public")].as_dict()
    edge.gateway.reload(
        json.dumps(bind_endpoints(config, {"b/api": [edge.api.bound()["inbound:http"]]}))
    )
    now = _served(edge.port)
    assert now != first
    assert now == ssl.PEM_cert_to_DER_cert(
        renewed.chain.decode().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
    assert edge.curl("/public/items")[0] == 200
