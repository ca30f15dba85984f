"""An egress gateway end to end: a/web calls an ExternalService that leaves through the Gateway
a/egress; the outside is an HTTPS server in a network namespace only the gateway reaches.

Topology (all made by this test, removed at the end even when it fails):

    root namespace                 gateway namespace               outside namespace
    a/web's sidecar, curl  --veth--  `weft sidecar` for a/egress  --veth--  HTTPS api.partner.test

a/web's sidecar has no egress destination for the host: it sends the plain HTTP request over
mesh mTLS to the gateway, which checks the caller against the ExternalService's allowedFrom
and originates TLS to the outside, verified against a CA the gateway trusts. The root namespace
has no way out to the outside network (a blackhole route stops packets before they leave), so
a direct attempt fails while the gateway's succeeds. Needs root, iproute2 and curl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import compiler, intent
from reconciler.targets.local import netns
from reconciler.targets.local.binding import to_json
from tests import sidecars
from tests.conftest import write_repo
from tests.pki import CA

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "curl")),
        reason="needs root, iproute2 and curl",
    ),
]

TD = "egress.local"
HOST = "api.partner.test"
GATEWAY_PORT = 15080  # the gateway's mesh-facing (mTLS) port for the ExternalService's port 80
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD),
    "services.yaml": sidecars.WEB_AND_API,
    "egress.yaml": f"""\
        apiVersion: weft.dev/v1alpha1
        kind: Gateway
        metadata: {{name: egress, namespace: a}}
        spec: {{}}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: ExternalService
        metadata: {{name: partner, namespace: a}}
        spec:
          host: {HOST}
          ports: [{{port: 80, protocol: http, tlsOrigination: {{port: 443}}}}]
          allowedFrom: [{{services: [web]}}]
          egressGateway: egress
        """,
}

OUTSIDE_SERVER = """\
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "host": self.headers["host"],
                           "peer": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"""


@dataclasses.dataclass
class Net:
    gateway_ns: str
    outside_ns: str
    gateway_addr: str  # the gateway's address on the root namespace's side
    gateway_out: str  # the gateway's address on the outside's side
    outside_addr: str
    outside_net: str


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def net() -> Iterator[Net]:
    tag = secrets.token_hex(3)
    x = netns.free_subnet(tag)
    n = Net(
        gateway_ns=f"weft-eg{tag}-gw",
        outside_ns=f"weft-eg{tag}-out",
        gateway_addr=f"{netns.PREFIX}.{x}.2",
        gateway_out=f"{netns.PREFIX}.{x}.129",
        outside_addr=f"{netns.PREFIX}.{x}.130",
        outside_net=f"{netns.PREFIX}.{x}.128/25",
    )
    root_if, gw_if, gw_out_if, out_if = (f"eg{tag}{s}" for s in "rgop")
    hosts = netns.NETNS_ETC / n.gateway_ns
    try:
        _run("ip", "netns", "add", n.gateway_ns)
        _run("ip", "netns", "add", n.outside_ns)
        _run("ip", "link", "add", root_if, "type", "veth", "peer", "name", gw_if)
        _run("ip", "link", "set", gw_if, "netns", n.gateway_ns)
        _run("ip", "link", "add", gw_out_if, "type", "veth", "peer", "name", out_if)
        _run("ip", "link", "set", gw_out_if, "netns", n.gateway_ns)
        _run("ip", "link", "set", out_if, "netns", n.outside_ns)
        _run("ip", "addr", "add", f"{netns.PREFIX}.{x}.1/25", "dev", root_if)
        _run("ip", "link", "set", root_if, "up")
        for ns, dev, addr in (
            (n.gateway_ns, gw_if, f"{n.gateway_addr}/25"),
            (n.gateway_ns, gw_out_if, f"{n.gateway_out}/25"),
            (n.outside_ns, out_if, f"{n.outside_addr}/25"),
        ):
            _run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # Nothing from the root namespace may leave for the outside network: refused here, not
        # sent towards this machine's default route.
        _run("ip", "route", "add", "blackhole", n.outside_net)
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n{n.outside_addr} {HOST}\n")
        yield n
    finally:
        subprocess.run(
            ["ip", "route", "del", "blackhole", n.outside_net], check=False, capture_output=True
        )
        subprocess.run(["ip", "link", "del", root_if], check=False, capture_output=True)
        for ns in (n.gateway_ns, n.outside_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(hosts, ignore_errors=True)


def _compile(root: Path) -> compiler.DesiredState:
    write_repo(root, INTENT)
    snapshot = dataclasses.replace(
        intent.files.from_directory(root), revision="test@sha1:" + "1" * 40
    )
    return compiler.compile(intent.load(snapshot))


@dataclasses.dataclass
class Rig:
    net: Net
    ca: CA
    web_config: dict[str, Any]
    gateway: sidecars.AgentProcess
    outside: subprocess.Popen[str]

    def caller(self, ns: str, sa: str) -> Any:
        """a/web's compiled sidecar, presenting the identity `ns/sa`."""
        return sidecars.start(
            self.web_config,
            sidecars.identity(self.ca, TD, ns, sa),
            {"outboundHttp": "127.0.0.1:0"},
            {"a/egress": [f"{self.net.gateway_addr}:{GATEWAY_PORT}"]},
        )


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def rig(tmp_path: Path, net: Net) -> Iterator[Rig]:
    desired = _compile(tmp_path / "intent")
    ca = CA.create()
    outside_ca = CA.create("the outside's CA")
    site = outside_ca.issue_server(HOST)
    (tmp_path / "out.crt").write_bytes(site.chain)
    (tmp_path / "out.key").write_bytes(site.key)
    (tmp_path / "outside-roots.pem").write_bytes(outside_ca.pem)
    (tmp_path / "server.py").write_text(OUTSIDE_SERVER)
    outside = subprocess.Popen(
        [
            *("ip", "netns", "exec", net.outside_ns),
            sys.executable,
            str(tmp_path / "server.py"),
            net.outside_addr,
            str(tmp_path / "out.crt"),
            str(tmp_path / "out.key"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert outside.stdout is not None
    assert outside.stdout.readline().strip() == "ready"

    files = tmp_path / "gateway"
    (files / "certs").mkdir(parents=True)
    gw = sidecars.identity(ca, TD, "a", "egress")
    for name, data in (("tls.crt", gw.chain), ("tls.key", gw.key), ("ca.crt", gw.bundle)):
        (files / "certs" / name).write_bytes(data)
    (files / "config.json").write_text(to_json(desired.gateway_configs[("a", "egress")].as_dict()))
    own_outbound = "127.0.0.1:15001"
    gateway = sidecars.AgentProcess(
        files / "config.json",
        files / "certs",
        {
            "inbound": {"egress-80": f"{net.gateway_addr}:{GATEWAY_PORT}"},
            "app": {"egress-80": own_outbound},
            "outboundHttp": own_outbound,
        },
        env={**os.environ, "SSL_CERT_FILE": str(tmp_path / "outside-roots.pem")},
        wrapper=("ip", "netns", "exec", net.gateway_ns),
    ).start()
    try:
        yield Rig(net, ca, desired.proxy_configs[("a", "web")].as_dict(), gateway, outside)
    finally:
        gateway.stop()
        outside.terminate()
        outside.wait(timeout=10)
        assert outside.stdout is not None
        outside.stdout.close()


def test_the_external_service_is_reached_only_through_the_egress_gateway(rig: Rig) -> None:
    web = rig.web_config["outbound"]
    assert web["egress"] == [], "the caller's sidecar has no way out of its own"
    (host,) = [h for h in web["http"] if HOST in h["hostnames"]]
    (cluster,) = [
        c for c in web["clusters"] if c["name"] == host["routes"][0]["backends"][0]["cluster"]
    ]
    assert cluster["spiffeId"] == f"spiffe://{TD}/ns/a/sa/egress"

    proxy = rig.caller("a", "web")
    try:
        outbound = proxy.bound()["outbound:http"]
        done = curl("-H", f"Host: {HOST}", f"http://{outbound}/v1/quote?x=1")
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["path"] == "/v1/quote?x=1"
        assert seen["peer"] == rig.net.gateway_out, "the connection to the outside is the gateway's"
    finally:
        proxy.shutdown(1.0)

    # From the caller's network the outside cannot be reached at all.
    direct = curl(
        "--resolve",
        f"{HOST}:443:{rig.net.outside_addr}",
        "--cacert",
        "/dev/null",
        f"https://{HOST}/",
    )
    assert direct.returncode == 7, direct.stderr  # curl: couldn't connect


def test_the_gateway_refuses_a_caller_the_external_service_does_not_admit(rig: Rig) -> None:
    # b/api's identity with a/web's routes: the gateway, not the caller, decides.
    proxy = rig.caller("b", "api")
    try:
        outbound = proxy.bound()["outbound:http"]
        done = curl(
            "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {HOST}", f"http://{outbound}/"
        )
        assert done.stdout == "403", (done.stdout, done.stderr)
    finally:
        proxy.shutdown(1.0)
    time.sleep(0.2)
    decided = [
        e.get("decided_by", "") for e in rig.gateway.lines if e.get("direction") == "inbound"
    ]
    assert any("Gateway a/egress" in d for d in decided), rig.gateway.lines[-5:]
