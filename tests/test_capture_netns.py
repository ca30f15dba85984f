"""Transparent capture end to end: two hosts in network namespaces, each with a real sidecar
running as its own UID behind `weft-capture.sh`, and clients that know nothing of the mesh.

Host A runs `a/web`'s sidecar; host B runs `b/api`'s sidecar in front of the demo app (HTTP on
8081, TCP echo on 7000). curl and a raw TCP client in A connect straight to B's address: A's
iptables hands the connection to A's sidecar, which carries it over mTLS to B, where B's
iptables hands it to B's sidecar, which authorizes A's SPIFFE ID and delivers it. A WebSocket
client in A reaches a WebSocket server in B the same way, on an `http` port and on an `http2`
one (where the sidecars carry the handshake as an HTTP/2 extended CONNECT). Everything
listens inside namespaces this test makes (10.253.x.0/24 on a bridge of its own), all removed
at the end even when a test fails. Needs root, iproute2, iptables, setpriv and curl.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler import capture
from reconciler.targets.local import netns
from reconciler.targets.local.binding import bind_endpoints, to_json
from tests import sidecars
from tests.pki import CA

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(shutil.which(t) for t in ("ip", "iptables", "setpriv", "curl")),
        reason="needs root, iproute2, iptables, setpriv and curl",
    ),
]

TD = "capture.local"
WEB_ID = f"spiffe://{TD}/ns/a/sa/web"
UID = capture.PROXY_UID
ADMIN_PORT = 15020
# B's mTLS listeners, per port name
INBOUND = {"http": 15006, "echo": 15007, "ws": 15008, "ws2": 15009}
WS_PORTS = {"ws": (9090, 9091), "ws2": (9092, 9093)}  # service port, B's WebSocket server
# B's capture: each app port redirected to its inbound listener.
B_INBOUND = {
    8081: INBOUND["http"],
    7000: INBOUND["echo"],
    **{target: INBOUND[name] for name, (_, target) in WS_PORTS.items()},
}
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD),
    "services.yaml": """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: a}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: b}
spec:
  ports:
    - {name: http, port: 8080, targetPort: 8081}
    - {name: echo, port: 7000, protocol: tcp}
    - {name: ws, port: 9090, targetPort: 9091}
    - {name: ws2, port: 9092, targetPort: 9093, protocol: http2}
""",
    "policies.yaml": """\
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-from-a, namespace: b}
spec:
  to: {services: [api], ports: [http]}
  from: [{namespaces: [a]}]
  when: {paths: ["/ok", "/ok/*"]}
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: echo-from-a, namespace: b}
spec:
  to: {services: [api], ports: [echo]}
  from: [{namespaces: [a]}]
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: ws-from-a, namespace: b}
spec:
  to: {services: [api], ports: [ws, ws2]}
  from: [{namespaces: [a]}]
  when: {methods: [GET], paths: ["/ws/*"]}
""",
    # An HTTPS site outside the mesh that a/web may reach with its own TLS.
    "external.yaml": """apiVersion: weft.dev/v1alpha1
kind: ExternalService
metadata: {name: ext, namespace: a}
spec:
  host: ext.test
  ports: [{port: 443, protocol: tls}]
  allowedFrom: [{services: [web]}]
""",
}
# A client must carry no proxy settings: capture, not configuration, brings it to the sidecar.
CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
RAW_CLIENT = """\
import socket, sys
host, port, data = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.create_connection((host, port), timeout=10)
got = b""
try:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    while chunk := s.recv(65536):
        got += chunk
except OSError:  # reset, or not connected any more
    got = b"<reset>"
print(got.decode())
"""
# A WebSocket echo server on each of B's WebSocket ports; it first says what it was opened with.
WS_SERVER = """\
import json, sys, threading
from websockets.sync.server import serve

def echo(conn):
    headers = conn.request.headers
    conn.send(json.dumps({"path": conn.request.path, "peer": headers.get("x-weft-peer")}))
    for message in conn:
        conn.send(message)

servers = [serve(echo, "127.0.0.1", int(port)) for port in sys.argv[1:]]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""
# An unmodified websockets client: what it was greeted with and echoed, or how it was refused.
WS_CLIENT = """\
import json, sys
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

url, messages = sys.argv[1], sys.argv[2:]
try:
    with connect(url, open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        echoed = []
        for m in messages:
            ws.send(m)
            echoed.append(ws.recv(timeout=10))
    print(json.dumps({"hello": hello, "echoed": echoed}))
except InvalidStatus as e:
    body = e.response.body.decode()
    headers = dict(e.response.headers.raw_items())
    print(json.dumps({"status": e.response.status_code, "body": body, "headers": headers}))
"""


class Process:
    """A program in a namespace; its output goes to a file the test prints when it fails."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def get(url: str) -> tuple[int, str]:
    """From the root namespace, with no proxy whatever the environment says."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(admin: str, proc: Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, f"{proc.name} exited:\n{proc.log.read_text()}"
        with contextlib.suppress(OSError):
            if get(f"http://{admin}/ready")[0] == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} not ready:\n{proc.log.read_text()}")


def wait_listening(host: netns.Host, port: int, proc: Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, f"{proc.name} exited:\n{proc.log.read_text()}"
        listening = subprocess.run(
            ["ss", "-N", host.netns, "-Hltn", f"sport = :{port}"],
            capture_output=True,
            text=True,
            check=True,
        )
        if listening.stdout.strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} does not listen on {port}:\n{proc.log.read_text()}")


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = CA.create()
        self.configs = sidecars.compiled(tmp / "intent", INTENT)
        tag = secrets.token_hex(3)
        self.net = netns.Network(tag, netns.free_subnet(tag))
        self.procs: list[Process] = []

    def build(self) -> None:
        self.net.create()
        # Each host names itself: the sidecar's admin server looks its address up, and these
        # namespaces have no DNS server (a lookup would cost two 5 s timeouts).
        # C is "the internet": one HTTPS server answering for ext.test (declared) and for
        # other.test (not declared); A resolves both names to it, as public DNS would.
        outside_https = self.net.address(2)
        self.a = self.net.add(
            0,
            {"web.a": self.net.address(0), "ext.test": outside_https, "other.test": outside_https},
        )
        self.b = self.net.add(1, {"api.b": self.net.address(1)})
        self.c = self.net.add(2, {})
        self.site_ca = CA.create("public web CA")
        site = self.site_ca.issue_server("ext.test")
        (self.tmp / "site.crt").write_bytes(site.chain)
        (self.tmp / "site.key").write_bytes(site.key)
        (self.tmp / "site-ca.crt").write_bytes(self.site_ca.pem)
        server = self.run(
            "c-https",
            [
                *self.c.exec_prefix(),
                *["openssl", "s_server", "-accept", "443", "-www", "-quiet"],
                *["-cert", str(self.tmp / "site.crt"), "-key", str(self.tmp / "site.key")],
            ],
            CLEAN_ENV,
        )
        wait_listening(self.c, 443, server)
        self.outside = self.net.address(200)  # no host has it: a destination not in the mesh
        b = self.b.address
        # A: capture only; its originalDestinations say which of B's addresses are b/api.
        self.sidecar(
            self.a,
            "web",
            {
                "outboundCapture": f"127.0.0.1:{capture.CAPTURE_PORT}",
                "originalDestinations": {
                    f"{b}:8080": "b/api:8080",
                    f"{b}:7000": "b/api:7000",
                    **{f"{b}:{port}": f"b/api:{port}" for port, _ in WS_PORTS.values()},
                },
            },
            endpoints={
                "b/api:8080": [f"{b}:8081"],
                "b/api:7000": [f"{b}:7000"],
                **{f"b/api:{port}": [f"{b}:{target}"] for port, target in WS_PORTS.values()},
            },
            inbound={},
        )
        # B: the demo app on loopback, reached only through the sidecar's inbound listeners.
        ports = {
            "http": {"addr": "127.0.0.1:8081", "protocol": "http"},
            "echo": {"addr": "127.0.0.1:7000", "protocol": "tcp"},
        }
        app = self.run(
            "b-app",
            [*self.b.exec_prefix(), str(Path(sys.executable).parent / "weft"), "demo-app"],
            {**CLEAN_ENV, "WEFT_SERVICE": "b/api", "WEFT_PORTS": json.dumps(ports)},
        )
        for port in (8081, 7000):
            wait_listening(self.b, port, app)
        targets = [str(target) for _, target in WS_PORTS.values()]
        ws = self.run(
            "b-ws", [*self.b.exec_prefix(), sys.executable, "-c", WS_SERVER, *targets], CLEAN_ENV
        )
        for target in targets:
            wait_listening(self.b, int(target), ws)
        self.sidecar(
            self.b,
            "api",
            {
                "outboundCapture": f"127.0.0.1:{capture.CAPTURE_PORT}",
                "inbound": {name: f"0.0.0.0:{port}" for name, port in INBOUND.items()},
            },
            endpoints={},
            inbound=B_INBOUND,
        )

    def run(self, name: str, cmd: Sequence[str], env: dict[str, str]) -> Process:
        proc = Process(name, cmd, self.tmp / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def sidecar(
        self,
        host: netns.Host,
        service: str,
        listeners: dict[str, Any],
        endpoints: dict[str, list[str]],
        inbound: dict[int, int],
    ) -> None:
        ns = "a" if service == "web" else "b"
        folder = self.tmp / service
        (folder / "certs").mkdir(parents=True)
        who = sidecars.identity(self.ca, TD, ns, service)
        for name, data in (("tls.crt", who.chain), ("tls.key", who.key), ("ca.crt", who.bundle)):
            (folder / "certs" / name).write_bytes(data)
        bound = bind_endpoints(self.configs[(ns, service)], endpoints)
        (folder / "config.json").write_text(to_json(bound))
        (folder / "listeners.json").write_text(json.dumps(listeners))
        subprocess.run(
            [*host.exec_prefix(), *capture.apply_command(proxy_uid=UID, inbound=inbound)],
            check=True,
        )
        admin = f"{host.address}:{ADMIN_PORT}"
        # As the local runtime runs it: its own UID (so capture lets its traffic pass), able
        # to read the root-owned certificates and nothing more.
        proc = self.run(
            f"{service}-sidecar",
            [
                *host.exec_prefix(uid=UID, caps=["dac_read_search"]),
                sys.executable,
                "-m",
                "reconciler.sidecar",
                "--config",
                str(folder / "config.json"),
                "--certs",
                str(folder / "certs"),
                "--listeners",
                str(folder / "listeners.json"),
                "--admin",
                admin,
            ],
            {**CLEAN_ENV, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        wait_ready(admin, proc)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.net.remove()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log.read_text()}" for p in self.procs)

    def curl(self, host: netns.Host, url: str, *options: str) -> tuple[int, dict[str, str], str]:
        """curl in `host`'s namespace: (status or -exit code, response headers, body)."""
        done = subprocess.run(
            [*host.exec_prefix(), "curl", "-sS", "-m", "10", "-D", "-", *options, url],
            capture_output=True,
            env=CLEAN_ENV,
            check=False,
        )
        if done.returncode != 0:
            return -done.returncode, {}, done.stderr.decode()
        head, _, body = done.stdout.decode().partition("\r\n\r\n")
        lines = head.split("\r\n")
        fields = (line.split(": ", 1) for line in lines[1:] if ": " in line)
        headers = {name.lower(): value for name, value in fields}
        return int(lines[0].split()[1]), headers, body

    def raw(self, host: netns.Host, addr: str, port: int, data: str) -> str:
        done = subprocess.run(
            [*host.exec_prefix(), sys.executable, "-c", RAW_CLIENT, addr, str(port), data],
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            check=True,
            timeout=30,
        )
        return done.stdout.strip()

    def websocket(self, host: netns.Host, url: str, *messages: str) -> dict[str, Any]:
        done = subprocess.run(
            [*host.exec_prefix(), sys.executable, "-c", WS_CLIENT, url, *messages],
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def metrics(self, host: netns.Host) -> str:
        return get(f"http://{host.address}:{ADMIN_PORT}/metrics")[1]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("capture"))
    try:
        m.build()
        yield m
    except BaseException:
        print(m.logs())
        raise
    finally:
        m.close()


def test_an_unmodified_http_client_is_captured_and_carried_over_mtls(mesh: Mesh) -> None:
    status, _, body = mesh.curl(mesh.a, f"http://{mesh.b.address}:8080/ok")
    assert status == 200, body
    seen = json.loads(body)
    # B's sidecar verified A's certificate and told the app: the call went over mTLS from
    # A's sidecar, though curl only ever connected to B's address.
    assert seen["service"] == "b/api"
    assert seen["caller"] == WEB_ID
    assert 'destination_service_name="api"' in mesh.metrics(mesh.a)


def test_an_h2c_client_is_captured_by_its_preface_and_routed(mesh: Mesh) -> None:
    # gRPC clients speak HTTP/2 with prior knowledge: capture tells it by the client preface,
    # and routes it like HTTP/1.1 (here to an `http` port, which B's app gets in HTTP/1.1).
    status, _, body = mesh.curl(
        mesh.a, f"http://{mesh.b.address}:8080/ok", "--http2-prior-knowledge"
    )
    assert status == 200, body
    assert json.loads(body)["caller"] == WEB_ID


def test_a_request_policy_denies_gets_403_naming_the_policy(mesh: Mesh) -> None:
    status, headers, body = mesh.curl(mesh.a, f"http://{mesh.b.address}:8080/admin")
    assert status == 403
    assert headers["x-weft-policy"] == "Mesh/mesh defaultPolicy: deny"
    assert "denied by" in body


@pytest.mark.parametrize("port", ["ws", "ws2"])
def test_an_unmodified_websocket_client_is_captured_and_echoed(mesh: Mesh, port: str) -> None:
    # The client dials B's address; capture in A brings the handshake to A's sidecar, which
    # routes it by the original destination (the Host is an address) to b/api, authorizes it
    # in B like any GET, and splices the upgraded connection: the echo crosses both sidecars.
    url = f"ws://{mesh.b.address}:{WS_PORTS[port][0]}/ws/echo?room=1"
    got = mesh.websocket(mesh.a, url, "one", "two", "x" * 70_000)
    assert got == {
        "hello": {"path": "/ws/echo?room=1", "peer": WEB_ID},
        "echoed": ["one", "two", "x" * 70_000],
    }
    sidecars.wait_until(
        lambda: any(
            e["destination"] == f"b/api:{WS_PORTS[port][0]}" and e["tcp"]["outcome"] == "closed"
            for e in tcp_access_lines(mesh, "web-sidecar")
        )
    )


@pytest.mark.parametrize("port", ["ws", "ws2"])
def test_a_websocket_policy_refuses_gets_403_before_the_upgrade(mesh: Mesh, port: str) -> None:
    service_port = WS_PORTS[port][0]

    def spliced() -> int:
        lines = tcp_access_lines(mesh, "api-sidecar")
        return len([e for e in lines if e["destination"] == f"b/api:{service_port}"])

    before = spliced()
    for path in ["/admin", "/ws/../admin"]:
        got = mesh.websocket(mesh.a, f"ws://{mesh.b.address}:{WS_PORTS[port][0]}{path}")
        assert got["status"] == 403, got
        assert "denied by" in got["body"]
        assert {k.lower(): v for k, v in got["headers"].items()}["x-weft-policy"] == (
            "Mesh/mesh defaultPolicy: deny"
        )
    # B's sidecar decided each handshake (403, before any 101) and spliced none of them
    sidecars.wait_until(
        lambda: (
            len(
                [
                    e
                    for e in access_lines(mesh, "api-sidecar")
                    if e["status"] == 403 and e["destination"] == f"b/api:{service_port}"
                ]
            )
            == 2
        )
    )
    assert spliced() == before


def test_raw_tcp_is_forwarded_by_its_original_destination_without_sniffing(mesh: Mesh) -> None:
    assert mesh.raw(mesh.a, mesh.b.address, 7000, "bytes, not HTTP") == "bytes, not HTTP"
    assert "istio_tcp_connections_opened_total" in mesh.metrics(mesh.b)
    opened = [
        line
        for line in mesh.metrics(mesh.b).splitlines()
        if line.startswith("istio_tcp_connections_opened_total")
    ]
    assert any(WEB_ID in line for line in opened), opened


def test_a_destination_outside_the_mesh_is_refused(mesh: Mesh) -> None:
    # Raw TCP: A's sidecar accepts (capture is local), finds no upstream, and closes; with
    # the client's bytes unread, the close is a reset.
    assert mesh.raw(mesh.a, mesh.outside, 5555, "hello") in ("", "<reset>")
    refused = (
        f'weft_tcp_connections_denied_total{{reporter="source",source_principal="{WEB_ID}",'
        'destination_service_name="unregistered",destination_service_namespace="unknown",'
        'destination_port="5555"} 1'
    )
    assert refused in mesh.metrics(mesh.a)
    # HTTP: refused with a 403 that says why.
    status, headers, body = mesh.curl(mesh.a, f"http://{mesh.outside}:8080/")
    assert status == 403
    assert "no route" in body
    assert headers["x-weft-policy"] == "outbound: no route"


def access_lines(mesh: Mesh, name: str) -> list[dict[str, Any]]:
    proc = next(p for p in mesh.procs if p.name == name)
    lines = (json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == "access"]


def tcp_access_lines(mesh: Mesh, name: str) -> list[dict[str, Any]]:
    return [line for line in access_lines(mesh, name) if "tcp" in line]


def test_an_apps_own_tls_to_a_declared_external_service_passes_by_its_sni(mesh: Mesh) -> None:
    # An unmodified curl speaks TLS itself: A's sidecar reads the ClientHello's server name
    # without terminating, finds ext.test:443 declared for a/web, and passes the bytes through;
    # curl verifies the site's own certificate end to end.
    ca = str(mesh.tmp / "site-ca.crt")
    status, _, body = mesh.curl(mesh.a, "https://ext.test/", "--cacert", ca)
    assert status == 200, body
    assert "s_server" in body
    # other.test is served by the same host but declared nowhere: refused, whatever the cert
    status, _, _ = mesh.curl(mesh.a, "https://other.test/", "-k")
    assert status < 0, "the connection is refused before any HTTP"
    metrics = mesh.metrics(mesh.a)
    passed = [
        line
        for line in metrics.splitlines()
        if line.startswith("istio_tcp_connections_closed_total")
        and 'destination_service_name="ext"' in line
    ]
    assert passed, metrics
    sidecars.wait_until(
        lambda: (
            {(e["path"], e["tcp"]["outcome"]) for e in tcp_access_lines(mesh, "web-sidecar")}
            >= {("ext.test", "closed"), ("other.test", "denied")}
        )
    )
    (seen,) = [e for e in tcp_access_lines(mesh, "web-sidecar") if e["path"] == "ext.test"]
    assert (seen["method"], seen["decided_by"]) == ("TLS", "egress:a/ext")
    assert seen["tcp"]["bytes_sent"] > 0
    # TLS passed through is TCP to Istio: its bytes are istio_tcp_*_bytes_total, both ways
    ext = [
        line
        for line in mesh.metrics(mesh.a).splitlines()
        if line.startswith(("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"))
        and 'destination_service_name="ext"' in line
    ]
    counted = {line.split("{")[0]: int(line.rsplit(" ", 1)[1]) for line in ext}
    assert counted == {
        "istio_tcp_sent_bytes_total": seen["tcp"]["bytes_sent"],
        "istio_tcp_received_bytes_total": seen["tcp"]["bytes_received"],
    }
    assert counted["istio_tcp_received_bytes_total"] > 200, "at least a ClientHello"


def test_a_caller_that_bypasses_its_own_sidecar_meets_the_inbound_one(mesh: Mesh) -> None:
    # From the root namespace nothing captures curl: it reaches B's pod port in plaintext,
    # B's iptables send it to the STRICT mTLS listener, which refuses it.
    done = subprocess.run(
        ["curl", "-sS", "-m", "5", f"http://{mesh.b.address}:8081/ok"],
        capture_output=True,
        env=CLEAN_ENV,
        check=False,
    )
    assert done.returncode != 0


def test_capture_rules_are_idempotent_and_cleanup_removes_them(mesh: Mesh) -> None:
    ns = mesh.b.exec_prefix()

    def rules() -> list[str]:
        out = subprocess.run(
            [*ns, "iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=True
        )
        return [r for r in out.stdout.splitlines() if "WEFT" in r]

    before = rules()
    subprocess.run([*ns, *capture.apply_command(proxy_uid=UID, inbound=B_INBOUND)], check=True)
    assert rules() == before
    subprocess.run([*ns, *capture.cleanup_command()], check=True)
    assert rules() == []
    subprocess.run([*ns, *capture.apply_command(proxy_uid=UID, inbound=B_INBOUND)], check=True)
    assert rules() == before
    status, _, _ = mesh.curl(mesh.a, f"http://{mesh.b.address}:8080/ok")
    assert status == 200
