"""fastpath end to end: real sidecars, real mTLS, real clients (curl, openssl s_client).

The mesh: a/web calls b/api (GET and POST on /api/*; /admin/* denied by an explicit policy);
b/api calls c/db over opaque TCP; nothing else is allowed. Sidecars run in-process through the
binding, each on its own tokio threads, on loopback ports the kernel picks.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import _native
from tests import sidecars
from tests.pki import CA, Identity

TD = "e2e.local"
REVISION = "main@sha1:" + "1" * 40
INTENT = {
    "mesh.yaml": f"""\
        apiVersion: weft.dev/v1alpha1
        kind: Mesh
        metadata: {{name: mesh}}
        spec: {{trustDomain: {TD}, mtls: STRICT, defaultPolicy: deny}}
        """,
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
          ports: [{name: http, port: 8080}]
          subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
        ---
        apiVersion: weft.dev/v1alpha1
        kind: Service
        metadata: {name: db, namespace: c}
        spec: {ports: [{name: postgres, port: 5432, protocol: tcp}]}
        """,
    "policies.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: api-from-a, namespace: b}
        spec:
          from: [{namespaces: [a]}]
          when: {methods: [GET, POST, PUT], paths: ["/api/*", "/admin/*", "/status/*"]}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: no-admin, namespace: b}
        spec:
          action: deny
          from: [{namespaces: [a]}]
          when: {paths: ["/admin/*"]}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: db-from-api, namespace: c}
        spec:
          from: [{services: [b/api]}]
        """,
    "routes.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: Route
        metadata: {name: api, namespace: b}
        spec:
          host: api.b
          rules:
            - matches: [{path: {prefix: /status/}}]
              backends: [{subset: v1}]
              retries: {attempts: 2, retryOn: [gateway-error]}
            - backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
              timeout: 2s
        """,
}


class Mesh:
    """The running test mesh: apps, sidecars, and the addresses to reach them by."""

    def __init__(self, root: Path) -> None:
        self.ca = CA.create()
        self.configs = sidecars.compiled(root, INTENT, REVISION)
        self.ids = {
            key: sidecars.identity(self.ca, TD, ns, name)
            for key, (ns, name) in {
                "web": ("a", "web"),
                "api": ("b", "api"),
                "db": ("c", "db"),
            }.items()
        }
        self.api_v1, self.api_v2 = sidecars.EchoServer("api-v1"), sidecars.EchoServer("api-v2")
        self.db_app = sidecars.TcpEchoServer()
        self.proxies: list[_native.Proxy] = []

    def start(self) -> None:
        self.db = self._start(
            "db",
            ("c", "db"),
            {"inbound": {"postgres": "127.0.0.1:0"}, "app": {"postgres": self.db_app.addr}},
        )
        self.api_v1_proxy = self._start(
            "api",
            ("b", "api"),
            {
                "inbound": {"http": "127.0.0.1:0"},
                "app": {"http": self.api_v1.addr},
                "outboundTcp": {"c/db:5432": "127.0.0.1:0"},
            },
            {"c/db": [self.db.bound()["inbound:postgres"]]},
        )
        self.api_v2_proxy = self._start(
            "api",
            ("b", "api"),
            {
                "inbound": {"http": "127.0.0.1:0"},
                "app": {"http": self.api_v2.addr},
            },
        )
        self.web = self._start(
            "web", ("a", "web"), {"outboundHttp": "127.0.0.1:0"}, self.web_endpoints()
        )

    def web_endpoints(self) -> dict[str, list[str]]:
        v1 = self.api_v1_proxy.bound()["inbound:http"]
        v2 = self.api_v2_proxy.bound()["inbound:http"]
        return {"b/api:8080/v1": [v1], "b/api:8080/v2": [v2], "b/api": [v1, v2]}

    def _start(
        self,
        who: str,
        key: tuple[str, str],
        listeners: dict[str, Any],
        endpoints: dict[str, list[str]] | None = None,
    ) -> _native.Proxy:
        proxy = sidecars.start(self.configs[key], self.ids[who], listeners, endpoints)
        self.proxies.append(proxy)
        return proxy

    @property
    def outbound(self) -> str:
        return self.web.bound()["outbound:http"]

    def stop(self) -> None:
        for p in self.proxies:
            p.shutdown(0.5)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    with sidecars.serving(m.api_v1), sidecars.serving(m.api_v2), sidecars.serving(m.db_app):
        m.start()
        try:
            yield m
        finally:
            m.stop()


def curl(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "|||%{http_code}", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    body, _, code = done.stdout.rpartition("|||")
    return int(code or 0), body


def test_an_allowed_request_crosses_mtls_to_the_app(mesh: Mesh) -> None:
    code, body = curl("-H", "Host: api.b:8080", f"http://{mesh.outbound}/api/items?x=1")
    assert code == 200, body
    seen = json.loads(body)
    assert seen["service"] in {"api-v1", "api-v2"}
    assert seen["path"] == "/api/items?x=1"
    assert seen["headers"]["host"] == "api.b:8080"
    trace = seen["headers"]["traceparent"].split("-")
    assert trace[0] == "00"
    assert (len(trace[1]), len(trace[2])) == (32, 16)


def test_the_app_learns_its_verified_caller_and_a_forged_one_is_replaced(mesh: Mesh) -> None:
    code, body = curl(
        "-H",
        "Host: api.b:8080",
        "-H",
        f"x-weft-peer: spiffe://{TD}/ns/b/sa/api",
        f"http://{mesh.outbound}/api/who",
    )
    assert code == 200
    assert json.loads(body)["headers"]["x-weft-peer"] == f"spiffe://{TD}/ns/a/sa/web"


def test_a_trace_is_continued_not_restarted(mesh: Mesh) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    code, body = curl(
        "-H", "Host: api.b:8080", "-H", f"traceparent: {parent}", f"http://{mesh.outbound}/api/t"
    )
    assert code == 200
    _, trace, span, flags = json.loads(body)["headers"]["traceparent"].split("-")
    assert (trace, flags) == ("4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span != "00f067aa0ba902b7"
    spans = (
        json.loads(mesh.web.drain_spans())
        + json.loads(mesh.api_v1_proxy.drain_spans())
        + json.loads(mesh.api_v2_proxy.drain_spans())
    )
    mine = [s for s in spans if s["trace_id"] == trace]
    assert {s["name"].split(" ")[0] for s in mine} == {"outbound", "inbound"}
    outbound = next(s for s in mine if s["name"].startswith("outbound"))
    inbound = next(s for s in mine if s["name"].startswith("inbound"))
    assert outbound["parent_span_id"] == "00f067aa0ba902b7"
    assert inbound["parent_span_id"] == outbound["span_id"], (
        "the server span is the client span's child"
    )


def test_a_denied_request_gets_403_naming_the_policy_and_revision(mesh: Mesh) -> None:
    code, body = curl("-X", "DELETE", "-H", "Host: api.b:8080", f"http://{mesh.outbound}/api/items")
    assert code == 403
    assert body == (
        f"weft: spiffe://{TD}/ns/a/sa/web may not DELETE /api/items on b/api:8080: "
        f"denied by Mesh/mesh defaultPolicy: deny (revision {REVISION})\n"
    )
    code, body = curl("-H", "Host: api.b:8080", f"http://{mesh.outbound}/admin/users")
    assert code == 403
    assert "denied by b/no-admin" in body
    assert mesh.api_v1.hits == mesh.api_v2.hits == 0, "a denied request never reaches the app"


def test_a_destination_policy_forbids_has_no_route(mesh: Mesh) -> None:
    code, body = curl("-H", "Host: db.c:5432", f"http://{mesh.outbound}/")
    assert code == 403
    assert body == (
        'weft: a/web has no route to "db.c:5432": it is not a destination this workload may '
        "call: no policy allows it, so Mesh/mesh defaultPolicy: deny decided "
        f"(revision {REVISION})\n"
    )


def test_tcp_forwards_binary_data_both_ways_and_half_close(mesh: Mesh) -> None:
    payload = os.urandom(1 << 20)
    host, port = mesh.api_v1_proxy.bound()["outbound:c/db:5432"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        received = bytearray()
        while chunk := s.recv(65536):
            received += chunk
        sender.join()
    assert bytes(received) == payload + f"bye:{len(payload)}".encode()
    stats = json.loads(mesh.db.stats())
    ((key, value),) = stats["tcp"]
    assert key["source"] == f"spiffe://{TD}/ns/b/sa/api"
    assert value["bytes_received"] == len(payload)


def s_client(addr: str, who: Identity | None, tmp_path: Path) -> str:
    """An HTTP request over `openssl s_client`; what came back (empty when refused)."""
    args = ["openssl", "s_client", "-connect", addr, "-tls1_3", "-quiet", "-verify_quiet"]
    if who is not None:
        for name, data in (("chain.pem", who.chain), ("key.pem", who.key)):
            (tmp_path / name).write_bytes(data)
        args += ["-cert", str(tmp_path / "chain.pem"), "-key", str(tmp_path / "key.pem")]
    request = b"GET /api/x HTTP/1.1\r\nHost: api.b\r\nConnection: close\r\n\r\n"
    done = subprocess.run(args, input=request, capture_output=True, timeout=20, check=False)
    return done.stdout.decode(errors="replace")


def test_openssl_with_the_right_identity_is_served(mesh: Mesh, tmp_path: Path) -> None:
    addr = mesh.api_v1_proxy.bound()["inbound:http"]
    assert s_client(addr, mesh.ids["web"], tmp_path).startswith("HTTP/1.1 200")
    assert s_client(addr, mesh.ids["db"], tmp_path).startswith("HTTP/1.1 403"), (
        "c/db is not allowed"
    )


@pytest.mark.parametrize(
    "who",
    [
        pytest.param("none", id="no-client-certificate"),
        pytest.param("foreign-ca", id="certificate-from-another-ca"),
        pytest.param("expired", id="expired-certificate"),
        pytest.param("not-yet-valid", id="not-yet-valid-certificate"),
        pytest.param("no-spiffe-id", id="certificate-without-spiffe-id"),
    ],
)
def test_inbound_refuses_bad_clients(mesh: Mesh, tmp_path: Path, who: str) -> None:
    web = f"spiffe://{TD}/ns/a/sa/web"
    identities: dict[str, Identity | None] = {
        "none": None,
        "foreign-ca": CA.create("evil").issue(web),
        "expired": mesh.ca.issue(
            web, valid_from=datetime.timedelta(days=-2), valid_for=datetime.timedelta(days=1)
        ),
        "not-yet-valid": mesh.ca.issue(web, valid_from=datetime.timedelta(days=1)),
        "no-spiffe-id": mesh.ca.issue(None),
    }
    answer = s_client(mesh.api_v1_proxy.bound()["inbound:http"], identities[who], tmp_path)
    assert "HTTP/1.1" not in answer
    assert mesh.api_v1.hits == 0


def test_plaintext_to_a_strict_port_is_refused(mesh: Mesh) -> None:
    code, _ = curl("-H", "Host: api.b", f"http://{mesh.api_v1_proxy.bound()['inbound:http']}/api/x")
    assert code == 0, "no HTTP answer at all on a STRICT port"
    assert mesh.api_v1.hits == 0


def test_an_upstream_with_another_services_certificate_cannot_pose_as_it(mesh: Mesh) -> None:
    impostor_app = sidecars.EchoServer("impostor")
    with sidecars.serving(impostor_app):
        impostor = sidecars.start(
            mesh.configs[("b", "api")],
            mesh.ids["db"],  # a valid mesh certificate, for c/db
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": impostor_app.addr}},
        )
        try:
            addr = impostor.bound()["inbound:http"]
            mesh.web.reload(
                sidecars.to_json(
                    sidecars.bind_endpoints(
                        mesh.configs[("a", "web")],
                        {"b/api": [addr], "b/api:8080/v1": [addr], "b/api:8080/v2": [addr]},
                    )
                )
            )
            code, body = curl("-H", "Host: api.b:8080", f"http://{mesh.outbound}/api/x")
            assert code == 503, body
            assert impostor_app.hits == 0
        finally:
            impostor.shutdown(0.1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param("{", "invalid ProxyConfig JSON", id="not-json"),
        pytest.param(
            '{"schemaVersion": "weft.dev/proxyconfig/v9"}',
            "unsupported schemaVersion",
            id="future-version",
        ),
        pytest.param("EXTRA", "unknown field `surprise`", id="unknown-field"),
    ],
)
def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(
    mesh: Mesh, config: str, message: str
) -> None:
    if config == "EXTRA":
        config = json.dumps({**mesh.configs[("a", "web")], "surprise": True})
    with pytest.raises(_native.ConfigError, match=message):
        mesh.web.reload(config)
    assert mesh.web.revision() == REVISION
    assert curl("-H", "Host: api.b:8080", f"http://{mesh.outbound}/api/x")[0] == 200


def test_retries_turn_a_flaky_gateway_error_into_success(mesh: Mesh) -> None:
    # /status/503 always fails: two retries, then the 503 is passed on
    code, _ = curl("-H", "Host: api.b:8080", f"http://{mesh.outbound}/status/503")
    assert code == 503
    assert mesh.api_v1.hits == 3, "one try and two retries, all to subset v1"


def test_canary_weights_hold_over_2000_requests(mesh: Mesh) -> None:
    host, port = mesh.outbound.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for _ in range(2000):
        conn.request("GET", "/api/c", headers={"Host": "api.b:8080"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()
    share = mesh.api_v2.hits / 2000
    assert 0.05 <= share <= 0.15, f"v2 got {share:.1%}, expected 10% ± 5"


def test_reload_and_rotation_under_load_fail_no_request(mesh: Mesh) -> None:
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def load() -> None:
        nonlocal count
        host, port = mesh.outbound.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while not done.is_set():
            try:
                conn.request("POST", "/api/load", body=b"x" * 1000, headers={"Host": "api.b:8080"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    failures.append(str(resp.status))
                count += 1
            except OSError as e:
                failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.close()

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        web_cfg = mesh.configs[("a", "web")]
        for i in range(5):
            revision = f"main@sha1:{i:040d}"
            mesh.web.reload(
                sidecars.to_json(
                    sidecars.bind_endpoints({**web_cfg, "revision": revision}, mesh.web_endpoints())
                )
            )
            for name, proxy in (
                ("web", mesh.web),
                ("api", mesh.api_v1_proxy),
                ("api", mesh.api_v2_proxy),
            ):
                ns, sa = {"web": ("a", "web"), "api": ("b", "api")}[name]
                fresh = sidecars.identity(mesh.ca, TD, ns, sa)
                proxy.rotate(fresh.chain, fresh.key, fresh.bundle)
            time.sleep(0.2)
        # A CA rollover: trust both, move every workload to the new CA, then retire the old.
        new_ca = CA.create("weft test CA 2")
        both = mesh.ca.pem + new_ca.pem
        for proxy, (ns, sa) in (
            (mesh.web, ("a", "web")),
            (mesh.api_v1_proxy, ("b", "api")),
            (mesh.api_v2_proxy, ("b", "api")),
        ):
            same = sidecars.identity(mesh.ca, TD, ns, sa)
            proxy.rotate(same.chain, same.key, both)
        time.sleep(0.2)
        for proxy, (ns, sa) in (
            (mesh.web, ("a", "web")),
            (mesh.api_v1_proxy, ("b", "api")),
            (mesh.api_v2_proxy, ("b", "api")),
        ):
            moved = new_ca.issue(f"spiffe://{TD}/ns/{ns}/sa/{sa}", bundle=both)
            proxy.rotate(moved.chain, moved.key, moved.bundle)
        time.sleep(0.2)
        for proxy, (ns, sa) in (
            (mesh.web, ("a", "web")),
            (mesh.api_v1_proxy, ("b", "api")),
            (mesh.api_v2_proxy, ("b", "api")),
        ):
            retired = new_ca.issue(f"spiffe://{TD}/ns/{ns}/sa/{sa}")
            proxy.rotate(retired.chain, retired.key, retired.bundle)
        time.sleep(0.3)
    finally:
        done.set()
        for w in workers:
            w.join()
    assert count > 100, "the load actually ran"
    assert failures == []
    assert mesh.web.revision() == f"main@sha1:{4:040d}"


def test_a_100_mb_upload_streams_through_without_being_buffered(mesh: Mesh) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = 100 * 1024 * 1024
    curl_cmd = [
        "curl",
        "-sS",
        "--max-time",
        "60",
        "-H",
        "Host: api.b:8080",
        "-H",
        "Transfer-Encoding: chunked",
        "-T",
        "-",
        f"http://{mesh.outbound}/api/upload",
    ]
    with subprocess.Popen(curl_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        block = b"\0" * (1 << 20)
        for _ in range(size // len(block)):
            proc.stdin.write(block)
        proc.stdin.close()
        out = proc.stdout.read()
    assert proc.returncode == 0
    assert json.loads(out)["received"] == size
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, f"peak RSS grew {grown_mb:.0f} MB while 100 MB passed through"


def _fastpath_threads() -> dict[int, str]:
    """fastpath's threads in this process, by thread ID, with their names: `fastpath-N`, one N
    per proxy runtime, so each proxy's threads can be told from another's."""
    found = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            name = (task / "comm").read_text().strip()
            if name.startswith("fastpath"):
                found[int(task.name)] = name
    return found


def _thread_state(tid: int) -> str:
    """A thread's state and the kernel function it waits in, from /proc."""
    task = Path("/proc/self/task") / str(tid)
    with contextlib.suppress(OSError):
        state = next(
            line for line in (task / "status").read_text().splitlines() if line.startswith("State")
        )
        return f"{state.split(':', 1)[1].strip()}, waiting in {(task / 'wchan').read_text()}"
    return "ended"


@pytest.mark.parametrize("workers", [1, 2])
def test_each_runtime_serves_then_stops_every_thread_it_started(mesh: Mesh, workers: int) -> None:
    # One worker is a current-thread runtime on a thread of its own; more is tokio's
    # multi-thread runtime. Both must serve, and a shutdown must leave no thread behind.
    # Other proxies in this process (the mesh's) keep running, and their blocking pools may
    # start threads at any time: only threads of this proxy's runtime, by its name, count.
    others = set(_fastpath_threads().values())

    def mine() -> dict[int, str]:
        return {t: n for t, n in _fastpath_threads().items() if n not in others}

    bound = sidecars.bind_endpoints(mesh.configs[("a", "web")], mesh.web_endpoints())
    web = mesh.ids["web"]
    listeners = json.dumps({"outboundHttp": "127.0.0.1:0"})
    proxy = _native.start(
        sidecars.to_json(bound), web.chain, web.key, web.bundle, listeners, workers=workers
    )
    try:
        # A new thread takes its name when it first runs, so wait for it to show.
        started = time.monotonic()
        sidecars.wait_until(lambda: len(mine()) >= workers)
        names = set(mine().values())
        assert len(names) == 1, f"one runtime's threads share one name: {mine()}"
        outbound = proxy.bound()["outbound:http"]
        codes = [
            curl("-H", "Host: api.b:8080", f"http://{outbound}/api/items?n={i}")[0]
            for i in range(4)
        ]
        assert codes == [200, 200, 200, 200]
    finally:
        proxy.shutdown(0.5)

    def left() -> dict[int, str]:
        return {t: n for t, n in _fastpath_threads().items() if n in names}

    # A blocking-pool thread the runtime could not stop at once ends when idle (tokio keeps
    # one 10 s), so allow for that.
    try:
        sidecars.wait_until(lambda: not left(), timeout=15.0)
    except AssertionError:
        # Say which threads stayed and what each is doing, so a failure in CI can be read.
        stayed = {t: _thread_state(t) for t in left()}
        raise AssertionError(
            f"{len(stayed)} of this proxy's threads still run 15 s after shutdown "
            f"({time.monotonic() - started:.1f} s after it started): {stayed}"
        ) from None
