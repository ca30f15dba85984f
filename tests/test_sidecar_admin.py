"""The sidecar's admin port as HTTP: what it reads (`admin.read_request`, over bytes), what it
answers over a real socket (keep-alive, HEAD, refusals, idle connections), real clients (curl
over HTTP/1.1 and 1.0), and that a real `weft sidecar` that fetches nothing maps no OpenSSL.
"""

from __future__ import annotations

import io
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import hostport
from reconciler.sidecar import admin, probes
from tests import sidecars
from tests.pki import CA


def read(raw: bytes) -> admin.Request | None:
    return admin.read_request(io.BytesIO(raw))


def refused(raw: bytes) -> tuple[int, str]:
    with pytest.raises(admin.BadRequestError) as e:
        read(raw)
    return e.value.status, str(e.value)


def test_a_get_is_read_with_its_path_and_keep_alive() -> None:
    got = read(b"GET /ready?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    assert got == admin.Request("GET", "/ready", keep_alive=True)
    closing = read(b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n")
    assert closing == admin.Request("GET", "/live", keep_alive=False)
    old = read(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert old == admin.Request("HEAD", "/metrics", keep_alive=False)  # 1.0: one request
    # RFC 9112 2.2: an empty line before the request line is ignored, bare LF accepted.
    assert read(b"\r\nGET / HTTP/1.1\nHost: a\n\n") == admin.Request("GET", "/", True)
    assert read(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n") is not None
    # RFC 9112 3.2.2: the absolute form is accepted, and read as its path.
    absolute = read(b"GET http://10.0.0.7:15020/ready?x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert absolute == admin.Request("GET", "/ready", True)
    assert read(b"GET HTTP://a HTTP/1.1\r\nHost: a\r\n\r\n") == admin.Request("GET", "/", True)
    assert read(b"") is None  # the peer closed between requests


def test_anything_else_is_refused_with_a_status_that_says_why() -> None:
    assert refused(b"GET /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody")[0] == 400
    assert refused(b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")[0] == 400
    assert refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")[0] == 505
    assert refused(b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 400
    assert refused(b"GET / HTTP/1.1\r\n\r\n") == (400, "an HTTP/1.1 request names its Host once")
    assert refused(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n")[0] == 400
    assert refused(b"GET / HTTP/1.1\r\nHost: a\rX-B: 1\r\n\r\n")[0] == 400  # a bare CR
    assert refused(b"GET /a b HTTP/1.1\r\n\r\n")[0] == 400
    assert refused(b"GET /a\tb HTTP/1.1\r\n\r\n")[0] == 400
    assert refused(b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n")[0] == 400
    # What the fuzzer found (tests/fuzz/crashes/admin): a method must be a token.
    assert refused(b"G\xc7ET / HTTP/1.1\r\n\r\n") == (400, "the method is not a token")
    assert refused(b" / HTTP/1.1\r\n\r\n")[0] == 400
    assert refused(b"GET / SPDY/3\r\n\r\n")[0] == 400
    assert refused(b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n")[0] == 400
    assert refused(b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n")[0] == 400
    assert refused(b"GET / HTTP/1.1\r\nHost: a\r\n")[0] == 400  # ended inside the headers
    assert refused(b"GET / HTTP/1.1")[0] == 400  # stopped mid-line
    assert refused(b"GET /" + b"a" * admin.MAX_LINE + b" HTTP/1.1\r\n\r\n")[0] == 414
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(admin.MAX_HEADERS + 1))
    assert refused(b"GET / HTTP/1.1\r\n" + many + b"\r\n")[0] == 431
    big = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(10))
    assert refused(b"GET / HTTP/1.1\r\n" + big + b"\r\n")[0] == 431


class _Sidecar:
    ready = True
    serving = True

    def metrics(self) -> str:
        return "weft_up 1\n"

    def config_dump(self) -> dict[str, Any]:
        return {"revision": "r1"}

    def clusters(self) -> dict[str, Any]:
        return {"clusters": []}

    def app_health(self, key: str) -> tuple[bool, str] | None:
        return (False, "GET :8080/healthz: 500") if key == "app/readinessProbe" else None


@pytest.fixture
def server() -> Iterator[admin._Server]:
    served = admin.serve(hostport.parse("127.0.0.1:0"), _Sidecar(), idle_seconds=0.5)
    try:
        yield served
    finally:
        served.shutdown()
        served.server_close()


def _answers(conn: socket.socket, *methods: str) -> list[tuple[str, dict[str, str], bytes]]:
    """The responses to requests of `methods` read off `conn`, bodies by content-length."""
    stream = conn.makefile("rb")
    out = []
    for method in methods:
        status = stream.readline().decode().strip()
        headers = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        length = 0 if method == "HEAD" else int(headers.get("content-length", 0))
        out.append((status, headers, stream.read(length)))
    return out


def test_one_connection_carries_many_requests_and_head_has_no_body(server: admin._Server) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
        conn.sendall(
            b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n"
            b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /app-health/app/readinessProbe HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /ready HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /config_dump HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        (ready, head, probe, post, dump) = _answers(conn, "GET", "HEAD", "GET", "POST", "GET")
        assert conn.recv(1) == b""  # closed after the request that asked for it
    assert ready == (
        "HTTP/1.1 200 OK",
        {"content-type": "text/plain", "content-length": "6"},
        b"ready\n",
    )
    # HEAD: GET's headers, the length of the body it would have had, no body.
    assert (head[0], head[1]["content-length"]) == ("HTTP/1.1 200 OK", "10")
    assert probe[0] == "HTTP/1.1 503 Service Unavailable"
    assert probe[2] == b"GET :8080/healthz: 500\n"
    assert (post[0], post[1]["allow"]) == ("HTTP/1.1 405 Method Not Allowed", "GET, HEAD")
    # Had HEAD sent a body, it would have been read as this response's status line.
    assert (dump[0], dump[1]["connection"]) == ("HTTP/1.1 200 OK", "close")
    assert json.loads(dump[2]) == {"revision": "r1"}


def test_a_bad_request_is_answered_then_closed(server: admin._Server) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
        conn.sendall(
            b"GET /ready HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        [(status, headers, body)] = _answers(conn, "GET")
        assert (status, headers["connection"]) == ("HTTP/1.1 400 Bad Request", "close")
        assert body == b"a request body is not accepted\n"
        assert conn.recv(1) == b""  # the bytes after it were never read as a request


def test_an_idle_connection_is_closed(server: admin._Server) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
        conn.sendall(b"GET /live HTTP/1.1\r\n")  # and then nothing
        started = time.monotonic()
        assert conn.recv(1024) == b""
        assert time.monotonic() - started < 4  # the server's 0.5 s, not the client's 5 s


def test_a_head_trickled_in_is_cut_off_at_its_deadline(server: admin._Server) -> None:
    """The deadline is for the whole head, not for each read: a byte now and then (here a
    header line every 0.2 s against the server's 0.5 s) does not keep the connection."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
        conn.sendall(b"GET /live HTTP/1.1\r\nHost: a\r\n")
        started = time.monotonic()
        closed_after = None
        for i in range(25):  # 5 s of trickling, were nothing to stop it
            if select.select([conn], [], [], 0.2)[0]:
                assert conn.recv(1) == b"", "nothing is answered to a head never finished"
                closed_after = time.monotonic() - started
                break
            conn.sendall(b"X-%d: 1\r\n" % i)
    assert closed_after is not None, "the trickled head kept the connection open"
    assert closed_after < 2.5


def test_a_kept_alive_connection_that_sends_nothing_more_is_closed(server: admin._Server) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
        conn.sendall(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
        assert _answers(conn, "GET")[0][0] == "HTTP/1.1 200 OK"
        started = time.monotonic()
        assert conn.recv(1) == b""
        assert time.monotonic() - started < 4


def test_connections_past_the_cap_are_closed_at_once() -> None:
    capped = admin.serve(hostport.parse("127.0.0.1:0"), _Sidecar(), 30, max_connections=2)
    address = ("127.0.0.1", capped.server_port)
    try:
        held = [socket.create_connection(address, timeout=5) for _ in range(2)]
        for conn in held:  # both are being served (each answered once, then kept alive)
            conn.sendall(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
            assert _answers(conn, "GET")[0][0] == "HTTP/1.1 200 OK"
        with socket.create_connection(address, timeout=5) as third:
            assert third.recv(1) == b""  # closed with nothing read, not after 30 s
        held.pop().close()
        sidecars.wait_until(lambda: _live(address))  # its slot is free again
        for conn in held:
            conn.close()
    finally:
        capped.shutdown()
        capped.server_close()


def _live(address: tuple[str, int]) -> bool:
    with socket.create_connection(address, timeout=5) as conn:
        conn.sendall(b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        return conn.recv(64).startswith(b"HTTP/1.1 200")


class _Broken(_Sidecar):
    def metrics(self) -> str:
        raise RuntimeError("a bug")


def test_an_endpoint_that_raises_answers_500_and_the_port_goes_on() -> None:
    broken = admin.serve(hostport.parse("127.0.0.1:0"), _Broken())
    try:
        with socket.create_connection(("127.0.0.1", broken.server_port), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            [(status, headers, body)] = _answers(conn, "GET")
        assert (status, headers["connection"], body) == (
            "HTTP/1.1 500 Internal Server Error",
            "close",
            b"internal error\n",
        )
        assert _live(("127.0.0.1", broken.server_port))
    finally:
        broken.shutdown()
        broken.server_close()


@pytest.mark.parametrize("version", ["--http1.1", "--http1.0"])
def test_curl_reads_every_endpoint(server: admin._Server, version: str) -> None:
    base = f"http://127.0.0.1:{server.server_port}"
    urls = [f"{base}/live", f"{base}/ready", f"{base}/metrics", f"{base}/clusters"]
    done = subprocess.run(
        ["curl", "-sS", version, "-w", "\\n=%{http_code} %{num_connects}\\n", *urls],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    codes = [line[1:] for line in done.stdout.splitlines() if line.startswith("=")]
    assert [c.split()[0] for c in codes] == ["200"] * 4, done.stdout
    # HTTP/1.1 reuses the first connection for the other three; HTTP/1.0 connects each time.
    reused = [c.split()[1] for c in codes]
    assert reused == (["1", "0", "0", "0"] if version == "--http1.1" else ["1"] * 4), done.stdout


def test_a_sidecar_that_fetches_nothing_maps_no_openssl(tmp_path: Path) -> None:
    """No admin request, probe or JWKS fetch loads Python's `ssl` (and OpenSSL's ~4.5 MB):
    fastpath's TLS is rustls, linked into the Rust module."""
    intent = {
        "mesh.yaml": sidecars.mesh_yaml("admin.local"),
        "services.yaml": sidecars.WEB_AND_API,
        "policies.yaml": sidecars.ALLOW_A_TO_B,
    }
    configs = sidecars.compiled(tmp_path / "intent", intent)
    (tmp_path / "certs").mkdir()
    who = sidecars.identity(CA.create(), "admin.local", "b", "api")
    for name, data in (("tls.crt", who.chain), ("tls.key", who.key), ("ca.crt", who.bundle)):
        (tmp_path / "certs" / name).write_bytes(data)
    config = tmp_path / "config.json"
    config.write_text(sidecars.to_json(sidecars.bind_endpoints(configs[("b", "api")], {})))
    listeners = {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": "127.0.0.1:9"}}
    app = sidecars.EchoServer("api")
    app_port = app.server_address[1]
    recorded = {"probe": {"httpGet": {"path": "/healthz", "port": 8080}}, "port": app_port}
    env = {**os.environ, probes.ENV: json.dumps({"app/readinessProbe": recorded})}
    with sidecars.serving(app):
        agent = sidecars.AgentProcess(config, tmp_path / "certs", listeners, env=env).start()
        try:
            for path in ("/ready", "/live", "/metrics", "/config_dump", "/clusters"):
                assert sidecars.http_get(f"{agent.admin}{path}")[0] == 200, path
            status, body = sidecars.http_get(f"{agent.admin}/app-health/app/readinessProbe")
            assert (status, body) == (200, f"GET :{app_port}/healthz: 200\n")
            mapped = Path(f"/proc/{agent.proc.pid}/maps").read_text()
        finally:
            agent.stop()
    assert "_native" in mapped  # the sidecar's own map, fastpath loaded
    # OpenSSL's libraries, and the extension modules that would hold it if linked statically.
    for library in ("libssl", "libcrypto", "_ssl.", "_hashlib."):
        assert library not in mapped, library
