"""Weft's identity and fastpath together: certificates issued by `reconciler.identity` are
accepted by rustls end to end, bad ones are refused, and renewal and a full CA rollover happen
under continuous traffic with zero failed requests.

The path is the production one: `identity.ensure` writes each workload's files (published by an
atomic `..data` swap), and real `weft sidecar` processes pick them up by polling.
"""

from __future__ import annotations

import datetime
import http.client
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import compiler, identity, intent
from reconciler.identity import authority
from tests import sidecars

TD = "ident.local"
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD),
    "services.yaml": sidecars.WEB_AND_API,
    "policies.yaml": sidecars.ALLOW_A_TO_B,
}
LIFETIME = datetime.timedelta(hours=24)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Mesh:
    """Two `weft sidecar` processes whose certificates come from a Weft identity store."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = identity.FileStore(tmp / "state")
        configs = sidecars.compiled(tmp / "intent", INTENT)
        self.mesh = intent.load(intent.files.from_directory(tmp / "intent"))
        identity.ca.init(self.store, TD, now())
        self.ensure(now())
        self.app = sidecars.EchoServer("api")
        self.configs = configs

    def ensure(self, at: datetime.datetime) -> identity.IssueReport:
        return identity.ensure(
            self.store,
            compiler.identities.required(self.mesh),
            trust_domain=TD,
            lifetime=LIFETIME,
            now=at,
        )

    def certs(self, ns: str, sa: str) -> Path:
        return self.store.root / "workloads" / ns / sa

    def start(self) -> None:
        api_config = self.tmp / "api.json"
        api_config.write_text(sidecars.to_json(self.configs[("b", "api")]))
        self.api = sidecars.AgentProcess(
            api_config,
            self.certs("b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": self.app.addr}},
        ).start()
        web_config = self.tmp / "web.json"
        web_config.write_text(
            sidecars.to_json(
                sidecars.bind_endpoints(
                    self.configs[("a", "web")], {"b/api": [self.api.bound["inbound:http"]]}
                )
            )
        )
        self.web = sidecars.AgentProcess(
            web_config, self.certs("a", "web"), {"outboundHttp": "127.0.0.1:0"}
        ).start()

    def stop(self) -> None:
        self.web.stop()
        self.api.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    with sidecars.serving(m.app):
        m.start()
        try:
            yield m
        finally:
            m.stop()


class Load:
    """Continuous keep-alive traffic through the web sidecar, counting every failure."""

    def __init__(self, outbound: str, workers: int = 3) -> None:
        self.host, port = outbound.rsplit(":", 1)
        self.port = int(port)
        self.failures: list[str] = []
        self.ok = 0
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(workers)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        while not self.done.is_set():
            try:
                conn.request("GET", "/load", headers={"Host": "api.b:8080"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(str(resp.status))
            except OSError as e:
                self.failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join()


def rotations(agent: sidecars.AgentProcess) -> int:
    return int(agent.dump()["rotations"]["applied"])


def test_issued_certificates_carry_traffic(mesh: Mesh) -> None:
    code, body = sidecars.http_get(f"http://{mesh.web.bound['outbound:http']}/hello", "api.b:8080")
    assert code == 200, body
    assert mesh.app.hits == 1


def test_a_renewed_workload_certificate_under_load_fails_no_request(mesh: Mesh) -> None:
    with Load(mesh.web.bound["outbound:http"]) as load:
        time.sleep(0.5)
        report = mesh.ensure(now() + LIFETIME * 0.6)  # past every certificate's renewal point
        assert len(report.issued) == 2
        sidecars.wait_until(lambda: rotations(mesh.web) == 1 and rotations(mesh.api) == 1)
        time.sleep(0.5)
    assert load.ok > 50
    assert load.failures == []


def test_a_full_ca_rollover_under_load_fails_no_request(mesh: Mesh) -> None:
    grace = datetime.timedelta(seconds=2)
    with Load(mesh.web.bound["outbound:http"]) as load:
        time.sleep(0.3)
        start = now()
        identity.ca.rotate(mesh.store, start, grace=grace)  # 1. trust both CAs
        sidecars.wait_until(lambda: rotations(mesh.web) >= 1 and rotations(mesh.api) >= 1)
        time.sleep(grace.total_seconds())
        issued = mesh.ensure(now())  # 2. the new CA issues; every old certificate is due
        assert len(issued.issued) == 2
        sidecars.wait_until(lambda: rotations(mesh.web) >= 2 and rotations(mesh.api) >= 2)
        time.sleep(grace.total_seconds())
        mesh.ensure(now())  # 3. nothing chains to the old CA any more: it is retired
        sidecars.wait_until(lambda: rotations(mesh.web) >= 3 and rotations(mesh.api) >= 3)
        time.sleep(0.5)
    state = identity.ca.read_state(mesh.store)
    assert len(state.trusted) == 1, "the old CA left the bundle"
    assert load.ok > 50
    assert load.failures == []


def s_client(addr: str, chain: bytes, key: bytes, tmp: Path) -> str:
    (tmp / "c.pem").write_bytes(chain)
    (tmp / "k.pem").write_bytes(key)
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            addr,
            "-tls1_3",
            "-quiet",
            "-verify_quiet",
            "-cert",
            str(tmp / "c.pem"),
            "-key",
            str(tmp / "k.pem"),
        ],
        input=b"GET /x HTTP/1.1\r\nHost: api.b\r\nConnection: close\r\n\r\n",
        capture_output=True,
        timeout=20,
        check=False,
    )
    return done.stdout.decode(errors="replace")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("good", id="issued-by-the-mesh-ca"),
        pytest.param("expired", id="expired"),
        pytest.param("not-yet-valid", id="not-yet-valid"),
        pytest.param("wrong-trust-domain", id="wrong-trust-domain"),
        pytest.param("unknown-ca", id="signed-by-an-unknown-ca"),
    ],
)
def test_fastpath_accepts_only_valid_mesh_certificates(
    mesh: Mesh, tmp_path: Path, case: str
) -> None:
    issuer = identity.ca.issuer(mesh.store)
    web = identity.SpiffeId(TD, "a", "web")
    cert = {
        "good": lambda: issuer.issue(web, LIFETIME, now()),
        "expired": lambda: issuer.issue(
            web, datetime.timedelta(hours=1), now() - datetime.timedelta(hours=3)
        ),
        "not-yet-valid": lambda: issuer.issue(web, LIFETIME, now() + datetime.timedelta(hours=2)),
        "wrong-trust-domain": lambda: issuer.issue(
            identity.SpiffeId("other.local", "a", "web"), LIFETIME, now()
        ),
        "unknown-ca": lambda: authority.generate(TD, now()).issuer().issue(web, LIFETIME, now()),
    }[case]()
    answer = s_client(mesh.api.bound["inbound:http"], cert.chain_pem(), cert.key.pem(), tmp_path)
    if case == "good":
        assert answer.startswith("HTTP/1.1 200")
    else:
        assert "HTTP/1.1" not in answer
