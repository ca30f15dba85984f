"""Path normalization through real sidecars: every spelling of one resource decides alike.

A deny on `/admin/*`, or an allow limited to `/api/*`, must not be side-stepped by spelling the
path differently (`//admin`, `/./admin`, `/%61dmin`, `/api/../admin`): the class of Istio's
CVE-2021-31920 and CVE-2021-39156. Each spelling is sent twice: by curl `--path-as-is` to the
caller's outbound listener (as an app would), and as raw bytes over mTLS straight to the
callee's inbound listener (as a client that bypasses the caller's sidecar would), so both
directions are shown to normalize on their own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from reconciler import _native
from tests import sidecars
from tests.pki import CA, Identity

TD = "paths.local"
REVISION = "main@sha1:" + "2" * 40


def intent(escaped_slashes: str | None) -> dict[str, str]:
    spec = (
        {}
        if escaped_slashes is None
        else {"pathNormalization": f"{{escapedSlashes: {escaped_slashes}}}"}
    )
    return {
        "mesh.yaml": sidecars.mesh_yaml(TD, defaultPolicy="deny", **spec),
        "services.yaml": """\
            apiVersion: weft.dev/v1alpha1
            kind: Service
            metadata: {name: web, namespace: a}
            spec: {ports: [{name: http, port: 8080}]}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: Service
            metadata: {name: api, namespace: b}
            spec: {ports: [{name: http, port: 8080}]}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: Service
            metadata: {name: files, namespace: b}
            spec: {ports: [{name: http, port: 8080}]}
            """,
        "policies.yaml": """\
            # b/api: everything from a, except /admin/*
            apiVersion: weft.dev/v1alpha1
            kind: AccessPolicy
            metadata: {name: api-from-a, namespace: b}
            spec: {to: {services: [api]}, from: [{namespaces: [a]}]}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: AccessPolicy
            metadata: {name: no-admin, namespace: b}
            spec:
              action: deny
              to: {services: [api]}
              from: [{namespaces: [a]}]
              when: {paths: ["/admin/*"]}
            ---
            # b/files: only /api/* from a
            apiVersion: weft.dev/v1alpha1
            kind: AccessPolicy
            metadata: {name: files-api-only, namespace: b}
            spec:
              to: {services: [files]}
              from: [{namespaces: [a]}]
              when: {paths: ["/api/*"]}
            """,
    }


CURL = ["curl", "-sS", "--max-time", "10", "--path-as-is", "-o", "-", "-w", "|||%{http_code}"]


class Mesh:
    def __init__(self, root: Path, escaped_slashes: str | None) -> None:
        self.root = root
        self.ca = CA.create()
        configs = sidecars.compiled(root / "repo", intent(escaped_slashes), REVISION)
        self.apps = {"api": sidecars.EchoServer("api"), "files": sidecars.EchoServer("files")}
        self.web_id = sidecars.identity(self.ca, TD, "a", "web")
        self.proxies: list[_native.Proxy] = []
        self.inbound: dict[str, str] = {}
        for name, app in self.apps.items():
            proxy = sidecars.start(
                configs[("b", name)],
                sidecars.identity(self.ca, TD, "b", name),
                {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": app.addr}},
            )
            self.proxies.append(proxy)
            self.inbound[name] = proxy.bound()["inbound:http"]
        self.web = sidecars.start(
            configs[("a", "web")],
            self.web_id,
            {"outboundHttp": "127.0.0.1:0"},
            {f"b/{name}": [addr] for name, addr in self.inbound.items()},
        )
        self.proxies.append(self.web)

    def via_outbound(self, service: str, path: str) -> tuple[int, str]:
        """curl as an app would call, the path sent exactly as written."""
        url = f"http://{self.web.bound()['outbound:http']}{path}"
        host = f"Host: {service}.b:8080"
        done = subprocess.run(
            [*CURL, "-H", host, url],
            capture_output=True,
            text=True,
            check=False,
        )
        body, _, code = done.stdout.rpartition("|||")
        return int(code or 0), body

    def via_inbound(self, service: str, path: str) -> tuple[int, str]:
        """Raw bytes over mTLS with a's identity, straight to the callee's sidecar."""
        return raw_request(self.inbound[service], path, self.web_id, self.root)

    def stop(self) -> None:
        for p in self.proxies:
            p.shutdown(0.5)


def raw_request(addr: str, path: str, who: Identity, tmp: Path) -> tuple[int, str]:
    chain, key = tmp / "client.pem", tmp / "client.key"
    chain.write_bytes(who.chain)
    key.write_bytes(who.key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the server is named by its SPIFFE ID, not a DNS name
    ctx.load_verify_locations(cadata=who.bundle.decode())
    ctx.load_cert_chain(chain, key)
    host, port = addr.rsplit(":", 1)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(request.encode("latin-1"))
        answer = bytearray()
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


@contextlib.contextmanager
def running(tmp_path: Path, escaped_slashes: str | None) -> Iterator[Mesh]:
    m = Mesh(tmp_path, escaped_slashes)
    try:
        with sidecars.serving(m.apps["api"]), sidecars.serving(m.apps["files"]):
            yield m
    finally:
        m.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with running(tmp_path, None) as m:
        yield m


def both(mesh: Mesh, service: str, path: str) -> list[tuple[int, str]]:
    return [mesh.via_outbound(service, path), mesh.via_inbound(service, path)]


# Equivalent spellings of /admin/users: all must be denied by b/no-admin.
ADMIN = [
    "/admin/users",
    "//admin/users",
    "/./admin/users",
    "/admin/./users",
    "/admin//users",
    "/api/../admin/users",
    "/api/x/../../admin/users",
    "/../admin/users",
    "/%61dmin/users",
    "/%61%64%6D%69%6E/users",
    "/api/%2e%2e/admin/users",
    "/api/%2E%2E/admin/users",
    "/%2e/admin/users",
    "/admin/users?x=1",
]

# Spellings the default refuses outright, whatever they would name.
REFUSED = [
    "/admin%2Fusers",
    "/admin%2fusers",
    "/api/..%2Fadmin/users",
    "/admin%5Cusers",
    "/a%",
    "/a%zz",
]


@pytest.mark.parametrize("path", ADMIN)
def test_every_spelling_of_a_denied_path_is_denied_by_the_same_policy(
    mesh: Mesh, path: str
) -> None:
    for code, body in both(mesh, "api", path):
        assert code == 403, body
        assert "denied by b/no-admin" in body, body
    assert mesh.apps["api"].hits == 0, "a denied request never reaches the app"


@pytest.mark.parametrize("path", REFUSED)
def test_escaped_slashes_and_malformed_escapes_are_refused_with_400(mesh: Mesh, path: str) -> None:
    for code, body in both(mesh, "api", path):
        assert code == 400, body
        assert "bad path" in body, body
    assert mesh.apps["api"].hits == 0


def test_a_raw_backslash_is_refused(mesh: Mesh) -> None:
    # curl would not send it unescaped; the raw socket does.
    code, body = mesh.via_inbound("api", "/admin\\users")
    assert code == 400, body
    assert mesh.apps["api"].hits == 0


@pytest.mark.parametrize(
    "path",
    ["/secret", "/api/../secret", "/api/%2e%2e/secret", "/api//../secret", "/%61pi/../secret"],
)
def test_an_allow_limited_to_a_prefix_cannot_be_escaped(mesh: Mesh, path: str) -> None:
    for code, body in both(mesh, "files", path):
        assert code == 403, body
        assert "denied by Mesh/mesh defaultPolicy: deny" in body, body
    assert mesh.apps["files"].hits == 0


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/api/x", "/api/x"),
        ("//api/./x", "/api/x"),
        ("/%61pi/x/", "/api/x/"),
        ("/api/y/../x?q=%2F..", "/api/x?q=%2F.."),
        ("/api/%7Euser", "/api/~user"),
        ("/api/a%20b", "/api/a%20b"),
        ("/api/a%3fb", "/api/a%3Fb"),
    ],
)
def test_the_app_is_served_the_path_that_was_authorized(mesh: Mesh, path: str, served: str) -> None:
    for code, body in both(mesh, "files", path):
        assert code == 200, body
        seen: dict[str, Any] = json.loads(body)
        assert seen["path"] == served, "the query is forwarded untouched, the path normalized"


@pytest.fixture
def keeping(tmp_path: Path) -> Iterator[Mesh]:
    with running(tmp_path, "keep") as m:
        yield m


@pytest.fixture
def decoding(tmp_path: Path) -> Iterator[Mesh]:
    with running(tmp_path, "decode") as m:
        yield m


def test_keep_passes_escaped_slashes_inside_one_segment(keeping: Mesh) -> None:
    for code, body in both(keeping, "files", "/api/bucket/a%2fb"):
        assert code == 200, body
        assert json.loads(body)["path"] == "/api/bucket/a%2Fb"
    # "admin%2Fusers" is one segment, not under /admin/: the documented trade-off of keep.
    for code, body in both(keeping, "api", "/admin%2Fusers"):
        assert code == 200, body
    for code, body in both(keeping, "api", "/x/../admin/users"):
        assert code == 403, body


def test_decode_turns_escaped_slashes_into_segments_before_deciding(decoding: Mesh) -> None:
    for path in ["/admin%2Fusers", "/api/..%2Fadmin%2Fusers", "/api%5C..%5Cadmin/users"]:
        for code, body in both(decoding, "api", path):
            assert code == 403, (path, body)
            assert "denied by b/no-admin" in body
    code, body = decoding.via_inbound("files", "/api\\x")
    assert code == 200, body
    assert json.loads(body)["path"] == "/api/x"


def test_validation_uses_the_sidecars_normalization() -> None:
    # The binding is the same function the sidecar runs, so these pin the shared rules.
    assert _native.normalize_path("/a/./b//c/../d", "reject") == "/a/b/d"
    assert _native.normalize_path("/a%2fb", "keep") == "/a%2Fb"
    assert _native.normalize_path("/a%2fb", "decode") == "/a/b"
    with pytest.raises(ValueError, match="escaped slash"):
        _native.normalize_path("/a%2fb", "reject")
    with pytest.raises(ValueError, match="malformed percent-encoding"):
        _native.normalize_path("/a%g0", "reject")


PIECES = ["/", "//", ".", "..", "a", "admin", "api", "users", "%2e", "%2E", "%61", "%7E", "%20"]
PIECES += ["%2f", "%5C", "%", "%zz", "x"]


def _decision(mesh: Mesh, service: str, path: str) -> tuple[int, str]:
    """What the caller's sidecar decided, by status and deciding policy, with plain http.client:
    it sends the path byte for byte."""
    host, port = mesh.web.bound()["outbound:http"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", f"{service}.b:8080")
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-weft-policy") or "app"
    finally:
        conn.close()


def test_the_decision_on_any_spelling_is_the_decision_on_its_normal_form(tmp_path: Path) -> None:
    """Hypothesis draws paths dense in dot segments, escapes and slashes; for each, the running
    sidecars must decide on it exactly as on its normal form (which is served, and idempotent)."""
    with running(tmp_path, None) as mesh:

        @hypothesis.settings(max_examples=150, deadline=None, database=None)
        @hypothesis.given(
            st.lists(st.sampled_from(PIECES), max_size=8).map(lambda p: "/" + "".join(p)),
            st.sampled_from(["api", "files"]),
        )
        def check(path: str, service: str) -> None:
            try:
                normal = _native.normalize_path(path, "reject")
            except ValueError:
                assert _decision(mesh, service, path) == (400, "path-normalization")
                return
            assert _native.normalize_path(normal, "reject") == normal
            assert _decision(mesh, service, path) == _decision(mesh, service, normal)

        check()


def test_every_local_reply_of_the_caller_is_counted_logged_and_traced_once(mesh: Mesh) -> None:
    """The caller's sidecar answers these itself (no route, bad path, denied by the callee):
    each must appear once in its metrics, once in its access log and once in its spans."""
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # sampled
    out = mesh.web.bound()["outbound:http"]
    calls = [("nothing.z:80", "/x", 403), ("api.b:8080", "/a%zz", 400), ("api.b:8080", "/ok", 200)]
    for host, path, want in calls:
        code, _ = _curl(out, host, path, "-H", f"traceparent: {parent}")
        assert code == want
    requests = [k for k, _ in json.loads(mesh.web.stats())["requests"]]
    assert sorted((k["destination"], k["code"], k["policy"]) for k in requests) == [
        ("b/api", 200, "default"),
        ("b/api", 400, "path-normalization"),
        ("nothing.z:80", 403, "outbound: no route"),
    ]
    log = json.loads(mesh.web.drain_access_log())
    assert sorted((e["status"], e["decided_by"]) for e in log) == [
        (200, "default"),
        (400, "path-normalization"),
        (403, "outbound: no route"),
    ]
    spans = [s for s in json.loads(mesh.web.drain_spans()) if s["name"].startswith("outbound")]
    assert sorted(dict(s["attributes"])["http.status_code"] for s in spans) == ["200", "400", "403"]


def _curl(addr: str, host: str, path: str, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [*CURL, *args, "-H", f"Host: {host}", f"http://{addr}{path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    body, _, code = done.stdout.rpartition("|||")
    return int(code or 0), body
