"""Egress to ExternalServices: only permitted sources, TLS originated and verified, TCP passed.

The "external" service is an HTTPS server on loopback with a certificate for `localhost` from
its own CA; the sidecar trusts it through `SSL_CERT_FILE`, the standard way to point a TLS
client at a trust store, which fastpath's system-roots loader honours.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import _native
from tests import sidecars
from tests.pki import CA

TD = "egress.local"


class External:
    def __init__(self, tmp: Path) -> None:
        self.ca = CA.create("public web CA")
        site = self.ca.issue_server("localhost")
        (tmp / "site.crt").write_bytes(site.chain)
        (tmp / "site.key").write_bytes(site.key)
        self.trust = tmp / "roots.pem"
        self.trust.write_bytes(self.ca.pem)
        self.sni: list[str | None] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / "site.crt", tmp / "site.key")
        context.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)  # type: ignore[assignment,misc,func-returns-value]
        self.https = sidecars.EchoServer("external")
        self.https.socket = context.wrap_socket(self.https.socket, server_side=True)
        self.tcp = sidecars.TcpEchoServer()


def intent(https_port: int, tcp_port: int) -> dict[str, str]:
    return {
        "mesh.yaml": sidecars.mesh_yaml(TD),
        "services.yaml": sidecars.WEB_AND_API,
        "external.yaml": f"""\
            apiVersion: weft.dev/v1alpha1
            kind: ExternalService
            metadata: {{name: payments, namespace: b}}
            spec:
              host: localhost
              ports:
                - {{port: 80, protocol: http, tlsOrigination: {{port: {https_port}}}}}
                - {{port: {tcp_port}, protocol: tcp}}
              allowedFrom: [{{services: [api]}}]
            """,
    }


@pytest.fixture
def external(tmp_path: Path) -> Iterator[External]:
    ext = External(tmp_path)
    with sidecars.serving(ext.https), sidecars.serving(ext.tcp):
        yield ext


def start(tmp: Path, ext: External, who: tuple[str, str]) -> _native.Proxy:
    https_port = ext.https.server_address[1]
    tcp_port = ext.tcp.server_address[1]
    configs = sidecars.compiled(tmp / "intent", intent(https_port, tcp_port))
    ca = CA.create()
    return sidecars.start(
        configs[who],
        sidecars.identity(ca, TD, *who),
        {"outboundHttp": "127.0.0.1:0", "outboundTcp": {f"localhost:{tcp_port}": "127.0.0.1:0"}}
        if who == ("b", "api")
        else {"outboundHttp": "127.0.0.1:0"},
    )


def curl(outbound: str, host: str) -> tuple[int, str]:
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            f"Host: {host}",
            "-w",
            "|||%{http_code}",
            f"http://{outbound}/charge",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    body, _, code = done.stdout.rpartition("|||")
    return int(code or 0), body


def test_an_allowed_source_reaches_the_external_service_over_verified_tls(
    tmp_path: Path, external: External, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(external.trust))
    api = start(tmp_path, external, ("b", "api"))
    try:
        code, body = curl(api.bound()["outbound:http"], "localhost:80")
        assert code == 200, body
        assert json.loads(body)["path"] == "/charge"
        assert external.sni == ["localhost"], "TLS was originated with the service's name as SNI"
    finally:
        api.shutdown(0.1)


def test_a_source_not_allowed_gets_no_route(
    tmp_path: Path, external: External, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(external.trust))
    web = start(tmp_path, external, ("a", "web"))
    try:
        code, body = curl(web.bound()["outbound:http"], "localhost:80")
        assert code == 403
        assert "has no route" in body
        assert external.https.hits == 0
    finally:
        web.shutdown(0.1)


def test_an_external_certificate_the_system_does_not_trust_is_refused(
    tmp_path: Path, external: External, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other-roots.pem"
    other.write_bytes(CA.create("some other CA").pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    api = start(tmp_path, external, ("b", "api"))
    try:
        code, body = curl(api.bound()["outbound:http"], "localhost:80")
        assert code == 502
        assert "external service b/payments" in body
        assert external.https.hits == 0
    finally:
        api.shutdown(0.1)


def test_tcp_egress_passes_bytes_through(
    tmp_path: Path, external: External, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(external.trust))
    api = start(tmp_path, external, ("b", "api"))
    try:
        tcp_port = external.tcp.server_address[1]
        host, port = api.bound()[f"outbound:localhost:{tcp_port}"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"hello outside")
            s.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := s.recv(4096):
                received += chunk
        assert received == b"hello outside" + b"bye:13"
    finally:
        api.shutdown(0.1)
