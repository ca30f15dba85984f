"""The app's kubelet probes run by a real `weft sidecar` process: what `/app-health/` answers.

A rewritten probe asks the sidecar's admin port, which runs the original recorded in its env
(`WEFT_APP_PROBES`); here the env is written as `reconciler.sidecar.probes` documents it, and
real HTTP, TCP and gRPC servers on loopback play the app.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from reconciler.sidecar import probes
from tests import sidecars
from tests.pki import CA

TD = "probes.local"
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD),
    "services.yaml": sidecars.WEB_AND_API,
    "policies.yaml": sidecars.ALLOW_A_TO_B,
}
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class _Health(http.server.BaseHTTPRequestHandler):
    """/healthz is 200 only with the header the probe declares; /moved 302; anything else 500."""

    def do_GET(self) -> None:  # http.server's name
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/healthz":
            status = 200 if self.headers.get("X-Probe") == "kubelet" else 401
        elif self.path == "/moved":
            status = 302
        else:
            status = 500
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens once the socket is closed


class _Grpc:
    """A gRPC server whose health service answers per service name, as grpc-health does."""

    def __init__(self, statuses: dict[bytes, int]) -> None:
        self.statuses = statuses
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(self._check)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        service = request[2:] if request[:1] == b"\x0a" else b""
        if service not in self.statuses:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08" + bytes([self.statuses[service]])


def _https_app() -> http.server.ThreadingHTTPServer:
    """`_Health` over TLS, with a certificate no one would verify (nor does the kubelet)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    server.paths = []  # type: ignore[attr-defined]
    site = CA.create("probe site CA").issue_server("app.local")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "chain.pem").write_bytes(site.chain)
        (Path(tmp) / "key.pem").write_bytes(site.key)
        context.load_cert_chain(Path(tmp) / "chain.pem", Path(tmp) / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def _not_http() -> socket.socket:
    """A server that answers every connection with a line that is not an HTTP status line."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=answer, daemon=True).start()
    return listener


@pytest.fixture
def apps() -> Iterator[dict[str, int]]:
    http_app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    http_app.paths = []  # type: ignore[attr-defined]
    https_app = _https_app()
    tcp_app = socket.create_server(("127.0.0.1", 0))
    other = _not_http()
    grpc_app = _Grpc({b"": 1, b"orders": 1, b"payments": 2})
    grpc_app.server.start()
    with sidecars.serving(http_app), sidecars.serving(https_app):
        try:
            yield {
                "http": http_app.server_address[1],
                "https": https_app.server_address[1],
                "tcp": tcp_app.getsockname()[1],
                "other": other.getsockname()[1],
                "grpc": grpc_app.port,
                "closed": _closed_port(),
            }
        finally:
            grpc_app.server.stop(0)
            tcp_app.close()
            other.close()


def _recorded(ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    """What the target records: each probe as the app team wrote it, and its port."""

    def entry(probe: dict[str, Any], port: int) -> dict[str, Any]:
        return {"probe": {**probe, "timeoutSeconds": 2}, "port": port}

    header = {"name": "X-Probe", "value": "kubelet"}
    get = {"path": "/healthz", "port": "http", "httpHeaders": [header]}
    return {
        "app/livenessProbe": entry({"httpGet": get}, ports["http"]),
        "app/readinessProbe": entry({"tcpSocket": {"port": "http"}}, ports["tcp"]),
        "app/startupProbe": entry({"grpc": {"port": ports["grpc"]}}, ports["grpc"]),
        "moved/livenessProbe": entry({"httpGet": {"path": "/moved", "port": 1}}, ports["http"]),
        "tls/livenessProbe": entry({"httpGet": {**get, "scheme": "HTTPS"}}, ports["https"]),
        "ssh/livenessProbe": entry({"httpGet": {"path": "/", "port": 1}}, ports["other"]),
        "sick/livenessProbe": entry({"httpGet": {"path": "/sick", "port": 1}}, ports["http"]),
        "down/readinessProbe": entry({"tcpSocket": {"port": 1}}, ports["closed"]),
        "orders/readinessProbe": entry({"grpc": {"port": 1, "service": "orders"}}, ports["grpc"]),
        "payments/readinessProbe": entry(
            {"grpc": {"port": 1, "service": "payments"}}, ports["grpc"]
        ),
        "nope/readinessProbe": entry({"grpc": {"port": 1, "service": "nope"}}, ports["grpc"]),
    }


@pytest.fixture
def agent(tmp_path: Path, apps: dict[str, int]) -> Iterator[sidecars.AgentProcess]:
    ca = CA.create()
    configs = sidecars.compiled(tmp_path / "intent", INTENT, "main@sha1:" + "a" * 40)
    files = tmp_path / "sidecar"
    (files / "certs").mkdir(parents=True)
    config = files / "config.json"
    config.write_text(
        sidecars.to_json(sidecars.bind_endpoints(configs[("a", "web")], {"b/api": []}))
    )
    web = sidecars.identity(ca, TD, "a", "web")
    for name, data in (("tls.crt", web.chain), ("tls.key", web.key), ("ca.crt", web.bundle)):
        (files / "certs" / name).write_bytes(data)
    env = {**os.environ, probes.ENV: json.dumps(_recorded(apps))}
    process = sidecars.AgentProcess(
        config, files / "certs", {"outboundHttp": "127.0.0.1:0"}, env=env
    ).start()
    try:
        yield process
    finally:
        process.stop()


def _ask(agent: sidecars.AgentProcess, key: str) -> tuple[int, str]:
    return sidecars.http_get(f"{agent.admin}/app-health/{key}")


def test_each_kind_of_probe_passes_against_a_healthy_app(agent: sidecars.AgentProcess) -> None:
    status, body = _ask(agent, "app/livenessProbe")
    assert status == 200, body
    assert "/healthz: 200" in body, "the declared header reached the app"
    assert _ask(agent, "app/readinessProbe")[0] == 200
    status, body = _ask(agent, "app/startupProbe")
    assert (status, body.strip().endswith("status 1")) == (200, True)
    assert _ask(agent, "orders/readinessProbe")[0] == 200
    assert _ask(agent, "moved/livenessProbe")[0] == 200, "3xx passes, as for the kubelet"
    status, body = _ask(agent, "tls/livenessProbe")
    assert (status, body) == (200, f"GET :{_port(agent, 'tls')}/healthz: 200\n")


def test_failures_answer_503_with_what_happened(agent: sidecars.AgentProcess) -> None:
    assert _ask(agent, "sick/livenessProbe") == (503, f"GET :{_port(agent, 'sick')}/sick: 500\n")
    status, body = _ask(agent, "down/readinessProbe")
    assert status == 503
    assert "ConnectionRefusedError" in body
    assert _ask(agent, "payments/readinessProbe") == (
        503,
        f"grpc :{_port(agent, 'payments')}: status 2\n",
    ), "NOT_SERVING fails"
    status, body = _ask(agent, "nope/readinessProbe")
    assert (status, body) == (503, f"grpc :{_port(agent, 'nope')}: NOT_FOUND\n")
    status, body = _ask(agent, "ssh/livenessProbe")
    assert status == 503
    assert "not an HTTP/1 status line: b'SSH-2.0" in body, body


def test_an_http_probe_with_a_control_character_is_refused_before_connecting() -> None:
    closed = _closed_port()  # a connection attempt would say ConnectionRefusedError instead
    for get in (
        {"path": "/healthz\r\nX-Injected: 1"},
        {"path": "/a b"},
        {"path": "/", "httpHeaders": [{"name": "X-A", "value": "1\r\nX-Injected: 1"}]},
    ):
        passed, detail = probes.run({"probe": {"httpGet": get}, "port": closed})
        assert not passed
        assert detail.startswith("ValueError: a control character"), detail


def test_a_probe_never_recorded_is_404_and_not_run(agent: sidecars.AgentProcess) -> None:
    assert _ask(agent, "app/unknownProbe") == (404, "no such probe\n")
    assert _ask(agent, "../ready")[0] == 404


def _port(agent: sidecars.AgentProcess, container: str) -> int:
    recorded = json.loads(agent.env[probes.ENV]) if agent.env else {}
    key = next(k for k in recorded if k.startswith(container + "/"))
    port: int = recorded[key]["port"]
    return port


def test_a_recorded_value_that_is_not_probes_is_none() -> None:
    assert probes.from_environment({probes.ENV: "not json"}) == {}
    assert probes.from_environment({probes.ENV: "[1, 2]"}) == {}
    bad = {"a/livenessProbe": {"probe": {}, "port": "80"}, "b/readinessProbe": 3}
    assert probes.from_environment({probes.ENV: json.dumps(bad)}) == {}


def test_protobuf_fields_are_read_past_others() -> None:
    # A reply with an unknown length-delimited field before status = SERVING.
    assert probes._status_field(b"\x12\x03abc\x08\x01") == 1
    assert probes._status_field(b"") == 0
    assert probes._varint(300) == b"\xac\x02"


class _Scripted:
    """A raw server that records each request head and answers `answer`, then holds the
    connection open (a stalled response) until the test ends."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.lock, self.closed = threading.Lock(), False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            with self.lock:  # `close` closes every connection, even one accepted meanwhile
                if self.closed:
                    conn.close()
                    return
                self.held.append(conn)
            conn.settimeout(5)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096) or b"\r\n\r\n"
                self.heads.append(head)
                conn.sendall(self.answer)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.listener.close()
            for conn in self.held:
                conn.close()


def _probe(server: _Scripted, get: dict[str, Any], timeout: int = 1) -> tuple[bool, str]:
    entry = {"probe": {"httpGet": {"port": 1, **get}, "timeoutSeconds": timeout}}
    return probes.run({**entry, "port": server.port})


def test_a_probes_own_headers_replace_ours_whatever_their_case() -> None:
    server = _Scripted(b"HTTP/1.1 204 No Content\r\n\r\n")
    try:
        headers = [
            {"name": "host", "value": "app.example"},
            {"name": "USER-AGENT", "value": "probe/1"},
            {"name": "X-Twice", "value": "a"},
            {"name": "X-Twice", "value": "b"},
        ]
        assert _probe(server, {"path": "/h", "httpHeaders": headers}) == (
            True,
            f"GET :{server.port}/h: 204",
        )
        [head] = server.heads
    finally:
        server.close()
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /h HTTP/1.1"
    names = [line.split(":")[0].lower() for line in lines[1:] if line]
    assert names.count("host") == 1
    assert names.count("user-agent") == 1
    assert "host: app.example" in lines
    assert "USER-AGENT: probe/1" in lines
    assert [x for x in lines if x.startswith("X-Twice")] == ["X-Twice: a", "X-Twice: b"]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1 status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1 status line"),
        (b"HTTP/2 200\r\n\r\n", "not an HTTP/1 status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "a malformed response header"),
        (b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", "a malformed response header"),
    ],
)
def test_a_response_head_go_would_refuse_fails_the_probe(answer: bytes, why: str) -> None:
    server = _Scripted(answer)
    try:
        passed, detail = _probe(server, {"path": "/"})
    finally:
        server.close()
    assert not passed
    assert why in detail, detail


def test_a_response_that_stalls_fails_within_the_probes_timeout() -> None:
    """The timeout is the whole probe's: a status line and then nothing (or a byte now and
    then) fails after timeoutSeconds, as the kubelet's does, not after each read's."""
    server = _Scripted(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n")
    try:
        started = time.monotonic()
        passed, detail = _probe(server, {"path": "/"}, timeout=1)
        took = time.monotonic() - started
    finally:
        server.close()
    assert not passed
    assert "TimeoutError" in detail, detail
    assert took < 3, took
