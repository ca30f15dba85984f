"""WebSocket (HTTP/1.1 Upgrade) through two real sidecars, with a real client and server.

The `upgrade` header is hop-by-hop; a proxy that strips it silently breaks every WebSocket app.
Here a/web's app opens a WebSocket to b/api through its outbound listener (plaintext, as an app
does), the two sidecars carry the handshake over mTLS, authorize it like any request on the
port, and then pipe the upgraded connection both ways. Python's `websockets` on both ends.

Each test runs twice: with b/api's port `http` (HTTP/1.1 between the sidecars, the Upgrade
carried as is) and `http2` (one HTTP/2 connection between the sidecars, the handshake carried
as an RFC 8441 extended CONNECT stream, answered 200 by the called sidecar, and turned back
into an HTTP/1.1 Upgrade on each app's side).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from reconciler import _native
from tests import sidecars
from tests.pki import CA

TD = "ws.local"
REVISION = "main@sha1:" + "3" * 40
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD, defaultPolicy="deny"),
    "services.yaml": sidecars.WEB_AND_API,
    "policies.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: ws-from-a, namespace: b}
        spec:
          from: [{namespaces: [a]}]
          when: {methods: [GET], paths: ["/ws/*"]}
        """,
}


def echo(conn: ServerConnection) -> None:
    """Echoes every message; tells the client what path and peer header it was opened with."""
    conn.send(
        json.dumps({"path": conn.request.path, "peer": conn.request.headers.get("x-weft-peer")})
    )
    for message in conn:
        conn.send(message)


def intent(protocol: str) -> dict[str, str]:
    services = sidecars.WEB_AND_API.replace(
        "spec: {ports: [{name: http, port: 8080}]}\n",
        f"spec: {{ports: [{{name: http, port: 8080, protocol: {protocol}}}]}}\n",
    )
    assert protocol == "http" or services != sidecars.WEB_AND_API
    return {**INTENT, "services.yaml": services}


class Pair:
    def __init__(self, root: Path, protocol: str = "http") -> None:
        ca = CA.create()
        self.protocol = protocol
        configs = sidecars.compiled(root, intent(protocol), REVISION)
        self.server: Server = serve(echo, "127.0.0.1", 0, max_size=None)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        app = f"127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.api = sidecars.start(
            configs[("b", "api")],
            sidecars.identity(ca, TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": app}},
        )
        self.web = sidecars.start(
            configs[("a", "web")],
            sidecars.identity(ca, TD, "a", "web"),
            {"outboundHttp": "127.0.0.1:0"},
            {"b/api": [self.api.bound()["inbound:http"]]},
        )

    def open(self, path: str) -> ClientConnection:
        host, port = self.web.bound()["outbound:http"].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
        # The URI names the mesh service (Host: api.b:8080); the socket reaches the sidecar.
        return connect(f"ws://api.b:8080{path}", sock=sock, max_size=None, open_timeout=10)

    def stop(self) -> None:
        for p in (self.web, self.api):
            p.shutdown(0.5)
        self.server.shutdown()


@pytest.fixture(params=["http", "http2"])
def pair(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(tmp_path, request.param)
    try:
        yield p
    finally:
        p.stop()


def tcp_stats(proxy: _native.Proxy) -> list[dict[str, object]]:
    return [key | stats for key, stats in json.loads(proxy.stats())["tcp"]]


def test_a_websocket_carries_messages_both_ways_through_the_mesh(pair: Pair) -> None:
    big = os.urandom(1 << 20)
    with pair.open("/ws/echo?room=1") as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello == {"path": "/ws/echo?room=1", "peer": f"spiffe://{TD}/ns/a/sa/web"}
        for text in ["one", "two", "three"]:
            ws.send(text)
            assert ws.recv(timeout=10) == text
        ws.send(big)
        assert ws.recv(timeout=10) == big
    # The handshake is one request in both sidecars' metrics and logs, answered 101 to the app
    # (and 200 to an extended CONNECT between sidecars, as the called sidecar counts it).
    called = 200 if pair.protocol == "http2" else 101
    for proxy, code in ((pair.web, 101), (pair.api, called)):
        sidecars.wait_until(lambda p=proxy: any(s["closed"] == 1 for s in tcp_stats(p)))
        (request,) = [k for k, _ in json.loads(proxy.stats())["requests"]]
        assert request["code"] == code
        http, spliced = sorted(json.loads(proxy.drain_access_log()), key=lambda e: "tcp" in e)
        assert (http["status"], http["method"], http["path"]) == (code, "GET", "/ws/echo?room=1")
        assert (spliced["method"], spliced["tcp"]["outcome"]) == ("TCP", "closed")
        assert spliced["tcp"]["bytes_received"] > len(big)
        (tcp,) = tcp_stats(proxy)
        assert tcp["bytes_received"] > len(big)
        assert tcp["bytes_sent"] > len(big)


def test_a_websocket_to_a_path_policy_does_not_open_is_refused(pair: Pair) -> None:
    for path in ["/admin", "/ws/../admin", "/%77s/../admin"]:
        with pytest.raises(InvalidStatus) as refused, pair.open(path):
            pass
        assert refused.value.response.status_code == 403
        assert b"Mesh/mesh defaultPolicy: deny" in refused.value.response.body
    assert tcp_stats(pair.api) == [], "nothing was spliced"


def test_closing_either_side_ends_the_spliced_connection(pair: Pair) -> None:
    with pair.open("/ws/x") as ws:
        ws.recv(timeout=10)
        ws.close()
        for proxy in (pair.web, pair.api):
            sidecars.wait_until(lambda p=proxy: [s["closed"] for s in tcp_stats(p)] == [1])
