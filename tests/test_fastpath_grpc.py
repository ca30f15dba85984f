"""gRPC through the mesh end to end: a real grpcio client and server, two real sidecars.

a/web's app calls b/greeter (a `grpc` port) through its sidecar's outbound listener with h2c, as
gRPC clients do; the sidecars speak HTTP/2 over mTLS (ALPN h2) and b/greeter's sidecar speaks
h2c to the grpcio server. Policy: namespace a may call `/pkg.Greeter/*`, except
`/pkg.Greeter/Drop`, which `b/no-drop` denies. The service needs no protoc: a generic handler
takes and returns bytes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from reconciler import _native
from tests import sidecars
from tests.pki import CA

TD = "grpc.local"
REVISION = "main@sha1:" + "2" * 40
AUTHORITY = "greeter.b:50051"
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD, mtls="STRICT", defaultPolicy="deny"),
    "services.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: Service
        metadata: {name: web, namespace: a}
        spec: {ports: [{name: http, port: 8080}]}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: Service
        metadata: {name: greeter, namespace: b}
        spec: {ports: [{name: grpc, port: 50051, protocol: grpc}]}
        """,
    "policies.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: greeter-from-a, namespace: b}
        spec:
          from: [{namespaces: [a]}]
          when: {paths: ["/pkg.Greeter/*"]}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: no-drop, namespace: b}
        spec:
          action: deny
          from: [{namespaces: [a]}]
          when: {paths: ["/pkg.Greeter/Drop"]}
        """,
}
WEB_ID = f"spiffe://{TD}/ns/a/sa/web"


def _hello(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-greeter", "done"),))
    seen = {
        "peer": metadata.get("x-weft-peer"),
        "traceparent": metadata.get("traceparent"),
    }
    return b"hello " + request + b" " + json.dumps(seen).encode()


def _count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"%06d" % i + b"x" * 1024


def _missing(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, f"no greeting for {request.decode()}")
    raise AssertionError("abort raises")


def _drop(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise AssertionError("policy denies this method: it must never reach the server")


def greeter() -> tuple[grpc.Server, str]:
    """A grpcio server with `pkg.Greeter`, plaintext on loopback (its sidecar speaks h2c to it)."""
    handler = grpc.method_handlers_generic_handler(
        "pkg.Greeter",
        {
            "Hello": grpc.unary_unary_rpc_method_handler(_hello),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
            "Missing": grpc.unary_unary_rpc_method_handler(_missing),
            "Drop": grpc.unary_unary_rpc_method_handler(_drop),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class Mesh:
    def __init__(self, root: Path) -> None:
        ca = CA.create()
        configs = sidecars.compiled(root, INTENT, REVISION)
        self.server, app = greeter()
        self.greeter = sidecars.start(
            configs[("b", "greeter")],
            sidecars.identity(ca, TD, "b", "greeter"),
            {"inbound": {"grpc": "127.0.0.1:0"}, "app": {"grpc": app}},
        )
        self.web = sidecars.start(
            configs[("a", "web")],
            sidecars.identity(ca, TD, "a", "web"),
            {"outboundHttp": "127.0.0.1:0"},
            {"b/greeter": [self.greeter.bound()["inbound:grpc"]]},
        )
        self.outbound = self.web.bound()["outbound:http"]
        # The app names the service in :authority, as it would by DNS name in a cluster.
        self.channel = grpc.insecure_channel(
            self.outbound, options=(("grpc.default_authority", AUTHORITY),)
        )

    def unary(self, method: str) -> Any:
        return self.channel.unary_unary(f"/pkg.Greeter/{method}")

    def stop(self) -> None:
        self.channel.close()
        for proxy in (self.web, self.greeter):
            proxy.shutdown(0.5)
        self.server.stop(0)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def requests(proxy: _native.Proxy) -> list[dict[str, Any]]:
    return [key | {"count": stats["count"]} for key, stats in json.loads(proxy.stats())["requests"]]


def test_an_allowed_unary_call_reaches_the_server_with_its_caller_and_trace(mesh: Mesh) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    reply, call = mesh.unary("Hello").with_call(
        b"web", timeout=10, metadata=(("traceparent", trace),)
    )

    assert call.code() == grpc.StatusCode.OK
    greeting, _, seen_json = reply.partition(b" {")
    assert greeting == b"hello web"
    seen = json.loads(b"{" + seen_json)
    assert seen["peer"] == WEB_ID
    assert seen["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert ("x-greeter", "done") in call.trailing_metadata()


def test_a_call_denied_by_a_path_rule_is_permission_denied_naming_the_policy(mesh: Mesh) -> None:
    with pytest.raises(grpc.RpcError) as denied:
        mesh.unary("Drop")(b"table", timeout=10)

    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = denied.value.details()
    assert "denied by b/no-drop" in details
    assert REVISION in details
    assert f"{WEB_ID} may not POST /pkg.Greeter/Drop" in details


def test_a_server_stream_is_carried_in_full_and_in_order(mesh: Mesh) -> None:
    stream = mesh.channel.unary_stream("/pkg.Greeter/Count")(b"500", timeout=20)
    messages = list(stream)

    assert len(messages) == 500
    assert [int(m[:6]) for m in messages] == list(range(500))
    assert all(len(m) == 6 + 1024 for m in messages)
    assert stream.code() == grpc.StatusCode.OK


def test_the_servers_status_and_message_cross_both_sidecars_as_trailers(mesh: Mesh) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        mesh.unary("Missing")(b"bob", timeout=10)

    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "no greeting for bob"


def test_calls_are_counted_with_their_grpc_status(mesh: Mesh) -> None:
    mesh.unary("Hello")(b"a", timeout=10)
    with pytest.raises(grpc.RpcError):
        mesh.unary("Drop")(b"b", timeout=10)
    with pytest.raises(grpc.RpcError):
        mesh.unary("Missing")(b"c", timeout=10)

    def statuses(proxy: _native.Proxy) -> dict[int | None, int]:
        return {r["grpc_status"]: r["count"] for r in requests(proxy) if r["protocol"] == "grpc"}

    sidecars.wait_until(lambda: statuses(mesh.greeter) == {0: 1, 7: 1, 5: 1})
    sidecars.wait_until(lambda: statuses(mesh.web) == {0: 1, 7: 1, 5: 1})
    inbound = [r for r in requests(mesh.greeter) if r["grpc_status"] == 7]
    assert inbound[0]["policy"] == "b/no-drop"
    assert inbound[0]["code"] == 200  # the HTTP status a gRPC caller is given


def test_curl_with_http2_prior_knowledge_through_the_outbound_listener(
    mesh: Mesh, tmp_path: Path
) -> None:
    message = b"curl"
    framed = b"\x00" + len(message).to_bytes(4, "big") + message
    body = tmp_path / "body"
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            str(body),
            "-w",
            "|||%{http_version} %{http_code}",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            f"Host: {AUTHORITY}",
            "--data-binary",
            "@-",
            f"http://{mesh.outbound}/pkg.Greeter/Hello",
        ],
        input=framed,
        capture_output=True,
        check=False,
    )
    headers, _, summary = done.stdout.decode().rpartition("|||")
    assert summary == "2 200", done.stderr
    # curl writes trailers after the headers: the server's status crossed both sidecars.
    assert "grpc-status: 0" in headers.lower()
    assert "x-greeter: done" in headers.lower()
    reply = body.read_bytes()
    assert reply[0] == 0
    assert reply[5:].startswith(b"hello curl ")
