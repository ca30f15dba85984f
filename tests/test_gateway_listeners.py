"""The ingress gateway's listeners, against real clients: a plain HTTP listener that redirects to
HTTPS, one that routes wildcard hosts, an HTTPS listener choosing among three certificates by
SNI (exact name, wildcard, default), exact route hostnames winning over wildcard ones, and a
listener that requires a client certificate (edge mTLS). Real fastpath processes on loopback;
curl (HTTP/1.1 and --http2) and `openssl s_client -servername` as the outside.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import compiler, intent
from tests import sidecars
from tests.conftest import write_repo
from tests.pki import CA

TD = "gw.local"


def gateway_yaml(tls: Path) -> str:
    return f"""\
        apiVersion: weft.dev/v1alpha1
        kind: Gateway
        metadata: {{name: public, namespace: edge}}
        spec:
          listeners:
            - name: http
              port: 8080
              protocol: HTTP
              hosts: [shop.example.com]
              httpsRedirect: {{port: 8443, statusCode: 308}}
            - name: plain
              port: 8081
              protocol: HTTP
              hosts: ["*.example.test"]
            - name: https
              port: 8443
              hosts: [shop.example.com, "*.example.test"]
              tls:
                certificates:
                  - {{certificateFile: {tls}/shop.crt, keyFile: {tls}/shop.key}}
                  - {{certificateFile: {tls}/wild.crt, keyFile: {tls}/wild.key}}
                  - {{certificateFile: {tls}/api.crt, keyFile: {tls}/api.key}}
            - name: partner
              port: 9443
              hosts: [partner.example.com]
              tls:
                certificateFile: {tls}/partner.crt
                keyFile: {tls}/partner.key
                clientCaFile: {tls}/clients.pem
        ---
        apiVersion: weft.dev/v1alpha1
        kind: Route
        metadata: {{name: shop, namespace: b}}
        spec:
          host: api
          gateways: [edge/public]
          hostnames: [shop.example.com, api.example.test, partner.example.com]
          rules: [{{backends: [{{}}]}}]
        ---
        apiVersion: weft.dev/v1alpha1
        kind: Route
        metadata: {{name: everything-else, namespace: a}}
        spec:
          host: web
          gateways: [edge/public]
          hostnames: ["*.example.test"]
          rules: [{{backends: [{{}}]}}]
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {{name: from-outside, namespace: b}}
        spec: {{from: [{{gateways: [edge/public]}}]}}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {{name: from-outside, namespace: a}}
        spec: {{from: [{{gateways: [edge/public]}}]}}
        """


@dataclasses.dataclass
class Edge:
    tmp: Path
    ports: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.site_ca = CA.create("public web CA")
        self.tls = self.tmp / "edge-tls"
        self.tls.mkdir()
        for name, host in [
            ("shop", "shop.example.com"),
            ("wild", "*.example.test"),
            ("api", "api.example.test"),
            ("partner", "partner.example.com"),
        ]:
            cert = self.site_ca.issue_server(host)
            (self.tls / f"{name}.crt").write_bytes(cert.chain)
            (self.tls / f"{name}.key").write_bytes(cert.key)
        self.trust = self.tmp / "site-ca.pem"
        self.trust.write_bytes(self.site_ca.pem)
        # The partner's own CA signs its client certificates; the gateway trusts only it.
        self.partner_ca = CA.create("partner CA")
        (self.tls / "clients.pem").write_bytes(self.partner_ca.pem)
        for name, ca in [("client", self.partner_ca), ("stranger", CA.create("someone else"))]:
            ident = ca.issue(None)
            (self.tmp / f"{name}.crt").write_bytes(ident.chain)
            (self.tmp / f"{name}.key").write_bytes(ident.key)
        root = write_repo(
            self.tmp / "intent",
            {
                "mesh.yaml": sidecars.mesh_yaml(TD),
                "services.yaml": sidecars.WEB_AND_API,
                "gateway.yaml": gateway_yaml(self.tls),
            },
        )
        snapshot = dataclasses.replace(
            intent.files.from_directory(root), revision="test@sha1:" + "4" * 40
        )
        self.desired = compiler.compile(intent.load(snapshot))
        self.mesh_ca = CA.create()
        self.apps = {"a/web": sidecars.EchoServer("web"), "b/api": sidecars.EchoServer("api")}

    def start(self) -> None:
        self.sidecars = {
            ref: sidecars.start(
                self.desired.proxy_configs[tuple(ref.split("/"))].as_dict(),  # type: ignore[index]
                sidecars.identity(self.mesh_ca, TD, *ref.split("/")),
                {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": app.addr}},
            )
            for ref, app in self.apps.items()
        }
        names = ("http", "plain", "https", "partner")
        self.gateway = sidecars.start(
            self.desired.gateway_configs[("edge", "public")].as_dict(),
            sidecars.identity(self.mesh_ca, TD, "edge", "public"),
            {"gateway": dict.fromkeys(names, "127.0.0.1:0")},
            {ref: [p.bound()["inbound:http"]] for ref, p in self.sidecars.items()},
        )
        bound = self.gateway.bound()
        self.ports = {n: int(bound[f"gateway:{n}"].rsplit(":", 1)[1]) for n in names}

    def curl(
        self, url: str, host: str, listener: str, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        scheme = "http" if listener in ("http", "plain") else "https"
        port = self.ports[listener]
        return subprocess.run(
            [
                "curl", "-sS", "--cacert", str(self.trust),
                "--resolve", f"{host}:{port}:127.0.0.1",
                "-o", "-", "-w", "\n%{http_code} %{http_version} %{redirect_url}",
                *extra, f"{scheme}://{host}:{port}{url}",
            ],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip

    def get(self, url: str, host: str, listener: str, *extra: str) -> tuple[int, str, str, str]:
        """(status, HTTP version, redirect URL, body) of a request that must complete."""
        out = self.curl(url, host, listener, *extra)
        assert out.returncode == 0, out.stderr
        body, _, last = out.stdout.rpartition("\n")
        status, version, *location = last.split(" ")
        return int(status), version, " ".join(location), body

    def served_subject(self, sni: str | None, port: int) -> str:
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(self.trust),
             "-verify_return_error", "-brief",
             *(["-servername", sni, "-verify_hostname", sni] if sni else ["-noservername"])],
            input="", capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert "Verification: OK" in out.stderr, out.stderr
        lines = out.stderr.splitlines()
        subject = next(line for line in lines if line.startswith("Peer certificate:"))
        return subject.split("CN", 1)[1].strip(" =")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    e = Edge(tmp_path_factory.mktemp("edge"))
    with sidecars.serving(e.apps["a/web"]), sidecars.serving(e.apps["b/api"]):
        e.start()
        try:
            yield e
        finally:
            e.gateway.shutdown(1.0)
            for p in e.sidecars.values():
                p.shutdown(1.0)


def test_plain_http_is_redirected_to_https_with_host_path_and_query(edge: Edge) -> None:
    hits = edge.apps["b/api"].hits
    for extra in ((), ("--http1.1",), ("--http2-prior-knowledge",)):
        status, _, location, _ = edge.get("/cart/items?id=7", "shop.example.com", "http", *extra)
        assert status == 308, extra
        assert location == "https://shop.example.com:8443/cart/items?id=7", extra
    assert edge.apps["b/api"].hits == hits, "a redirect reaches no app"
    # ... and following it lands on the HTTPS listener (curl dials the Location's port).
    out = edge.curl(
        "/cart", "shop.example.com", "http", "-L",
        "--connect-to", f"shop.example.com:8443:127.0.0.1:{edge.ports['https']}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.rpartition("\n")[0])["service"] == "api"


def test_a_plain_http_listener_routes_wildcard_hosts(edge: Edge) -> None:
    status, version, _, body = edge.get("/x", "shop.example.test", "plain")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["service"] == "web"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-weft-peer"] == f"spiffe://{TD}/ns/edge/sa/public"
    assert version == "1.1"


def test_sni_selects_the_certificate_exact_then_wildcard_then_default(edge: Edge) -> None:
    port = edge.ports["https"]
    assert edge.served_subject("shop.example.com", port) == "shop.example.com"
    assert edge.served_subject("api.example.test", port) == "api.example.test"
    assert edge.served_subject("www.example.test", port) == "*.example.test"
    # No SNI at all: the first certificate, the listener's default.
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-noservername", "-brief"],
        input="", capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert "CN = shop.example.com" in out.stderr or "CN=shop.example.com" in out.stderr, out.stderr


@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_an_exact_hostname_wins_over_a_wildcard(edge: Edge, version: str) -> None:
    expected = "2" if version == "--http2" else "1.1"
    status, got, _, body = edge.get("/", "api.example.test", "https", version)
    assert (status, got, json.loads(body)["service"]) == (200, expected, "api"), body
    status, got, _, body = edge.get("/", "www.example.test", "https", version)
    assert (status, got, json.loads(body)["service"]) == (200, expected, "web"), body
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "https"


def test_a_wildcard_does_not_answer_its_bare_suffix(edge: Edge) -> None:
    status, _, _, body = edge.get("/", "example.test", "https", "-k")
    assert status == 403, body
    assert "has no route" in body


def test_edge_mtls_refuses_a_client_without_a_certificate_from_the_trusted_ca(
    edge: Edge,
) -> None:
    hits = edge.apps["b/api"].hits
    out = edge.curl("/", "partner.example.com", "partner")
    assert out.returncode != 0, out.stdout
    stranger = ("--cert", str(edge.tmp / "stranger.crt"), "--key", str(edge.tmp / "stranger.key"))
    out = edge.curl("/", "partner.example.com", "partner", *stranger)
    assert out.returncode != 0, out.stdout
    assert edge.apps["b/api"].hits == hits
    # TLS 1.2, where the refusal is part of the handshake (in 1.3 it follows the client's
    # Finished, and s_client may be done before it reads the alert).
    handshake = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{edge.ports['partner']}", "-tls1_2",
         "-servername", "partner.example.com", "-CAfile", str(edge.trust)],
        input="GET / HTTP/1.1\r\nHost: partner.example.com\r\n\r\n",
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert handshake.returncode != 0, handshake.stderr
    assert "alert" in handshake.stderr, handshake.stderr
    client = ("--cert", str(edge.tmp / "client.crt"), "--key", str(edge.tmp / "client.key"))
    for version in ("--http2", "--http1.1"):
        status, _, _, body = edge.get("/", "partner.example.com", "partner", *client, version)
        assert status == 200, body
        assert json.loads(body)["service"] == "api"
