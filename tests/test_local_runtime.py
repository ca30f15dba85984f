"""`weft up` end to end: the template mesh as processes, reconciled from commits.

One mesh runs for the module (starting eleven sidecars and apps takes seconds); each test leaves
the repository at a good revision for the next.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest

from reconciler import status as status_
from tests import sidecars
from tests.pki import CA


class Up:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.repo = state / "repo"
        self.log = (state.parent / "up.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler.cli",
                "up",
                "--state-dir",
                str(state),
                "--poll",
                "0.3",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            sidecars.wait_until(lambda: self.applied() is not None, timeout=90)
            self.ports: dict[str, int] = json.loads((state / "local" / "ports.json").read_text())
            # Apps start after their sidecars are ready; give them a moment to listen. Twenty in
            # a row, because b/api is a 90/10 canary: one success says only that v1 is up.
            sidecars.wait_until(
                lambda: all(
                    self.call("a/web/default", "http://api.b:8080/")[0] == 200 for _ in range(20)
                ),
                timeout=60,
            )
        except BaseException:
            self.stop()  # a mesh that never came up must not outlive the test
            print((state.parent / "up.log").read_text()[-4000:])
            raise

    def status(self) -> status_.Status | None:
        return status_.read(self.state / "status.json")

    def applied(self) -> str | None:
        s = self.status()
        return s.last_applied_revision if s else None

    def proxy(self, instance: str) -> str:
        return f"http://127.0.0.1:{self.ports[f'outbound:{instance}']}"

    def call(
        self, instance: str, url: str, method: str = "GET"
    ) -> tuple[int, dict[str, Any] | str]:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": self.proxy(instance)})
        )
        req = urllib.request.Request(url, method=method)
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, OSError) as e:  # not listening (yet)
            return 0, str(e)

    def commit(self, message: str, edit: dict[str, str | None]) -> str:
        """Write (or delete, with None) files in the repo and commit them on main."""
        for rel, text in edit.items():
            path = self.repo / rel
            if text is None:
                path.unlink()
            else:
                path.write_text(text)
        repo = pygit2.Repository(str(self.repo))
        repo.index.add_all()
        repo.index.write()
        sig = pygit2.Signature("test", "test@localhost")
        oid = repo.create_commit(
            "HEAD", sig, sig, message, repo.index.write_tree(), [repo.head.target]
        )
        return f"main@sha1:{oid}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    mesh = Up(tmp_path_factory.mktemp("weft") / "state")
    try:
        yield mesh
    finally:
        mesh.stop()


ALLOW_A_TO_LEDGER = """\
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: ledger-from-a, namespace: c}
spec:
  to: {services: [ledger]}
  from: [{namespaces: [a]}]
"""


def test_the_template_mesh_enforces_the_seed_scenario(up: Up) -> None:
    code, body = up.call("a/web/default", "http://api.b:8080/")
    assert code == 200
    assert isinstance(body, dict)
    assert body["caller"] == "spiffe://weft.local/ns/a/sa/web"
    code, body = up.call("a/web/default", "http://ledger.c:8080/entries")
    assert code == 403
    assert "has no route" in str(body)
    code, _ = up.call("b/api/v1", "http://ledger.c:8080/entries/7")
    assert code == 200
    code, body = up.call("b/api/v1", "http://ledger.c:8080/entries/7", method="DELETE")
    assert code == 403
    assert "denied by Mesh/mesh defaultPolicy: deny" in str(body)


def test_a_committed_policy_change_is_enforced_and_a_revert_undoes_it(up: Up) -> None:
    deny = (up.repo / "c" / "policies.yaml").read_text()
    # Lift A<->C's guard on c and allow a -> c/ledger: a commit, then traffic.
    lifted = deny.replace(
        "  name: never-from-a\n  namespace: c\nspec:\n  action: deny\n",
        "  name: never-from-a\n  namespace: c\nspec:\n  action: deny\n  to: {services: [db]}\n",
    )
    revision = up.commit(
        "allow a -> c/ledger", {"c/policies.yaml": lifted, "c/allow-a.yaml": ALLOW_A_TO_LEDGER}
    )
    sidecars.wait_until(lambda: up.applied() == revision, timeout=30)
    sidecars.wait_until(
        lambda: up.call("a/web/default", "http://ledger.c:8080/x")[0] == 200, timeout=10
    )
    revision = up.commit("revert", {"c/policies.yaml": deny, "c/allow-a.yaml": None})
    sidecars.wait_until(lambda: up.applied() == revision, timeout=30)
    sidecars.wait_until(
        lambda: up.call("a/web/default", "http://ledger.c:8080/x")[0] == 403, timeout=10
    )


def test_a_broken_commit_is_refused_and_traffic_keeps_flowing(up: Up) -> None:
    good = up.applied()
    services = (up.repo / "b" / "services.yaml").read_text()
    broken = up.commit(
        "typo",
        {
            "b/services.yaml": services.replace(
                "port: 8080\n      targetPort: 8081", "port: 8080\n      targetPrt: 8081"
            )
        },
    )
    sidecars.wait_until(
        lambda: (
            (s := up.status()) is not None
            and s.last_attempted_revision == broken
            and not s.conditions["Reconciling"].status
        ),
        timeout=30,
    )
    s = up.status()
    assert s is not None
    assert s.last_applied_revision == good
    assert s.conditions["Stalled"].status
    assert any(
        e.startswith("b/services.yaml:11:7: error: unknown field 'spec.ports[0].targetPrt'")
        for e in s.errors
    ), s.errors
    assert len(s.errors) == 1, "no echo of the broken Service from the Route that names it"
    assert up.call("a/web/default", "http://api.b:8080/")[0] == 200, (
        "the last good revision still serves"
    )
    fixed = up.commit("fix the typo", {"b/services.yaml": services})
    sidecars.wait_until(lambda: up.applied() == fixed, timeout=30)
    s = up.status()
    assert s is not None
    assert not s.conditions["Stalled"].status


def test_canary_weights_hold_in_real_traffic(up: Up) -> None:
    v2 = sum(
        1
        for _ in range(2000)
        if (r := up.call("a/web/default", "http://api.b:8080/"))[0] == 200
        and isinstance(r[1], dict)
        and r[1]["instance"] == "v2"
    )
    assert 0.05 <= v2 / 2000 <= 0.15, f"v2 served {v2 / 2000:.1%}"


def _pid_of(up: Up, needle: str) -> int:
    out = subprocess.run(
        ["pgrep", "-f", "--", needle], capture_output=True, text=True, check=False
    ).stdout.split()
    assert out, f"no process matches {needle}"
    return int(out[0])


def _gateway_intent(port: int, tls: Path) -> dict[str, str | None]:
    return {
        "a/gateway.yaml": f"""\
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: public, namespace: a}}
spec:
  listeners:
    - name: https
      port: {port}
      hosts: [shop.example.com, ledger.example.com]
      tls: {{certificateFile: {tls}/tls.crt, keyFile: {tls}/tls.key}}
---
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {{name: storefront, namespace: a}}
spec:
  host: web
  gateways: [public]
  hostnames: [shop.example.com]
  rules: [{{backends: [{{}}]}}]
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: from-outside, namespace: a}}
spec:
  to: {{services: [web]}}
  from: [{{gateways: [public]}}]
""",
        "c/gateway-route.yaml": """\
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: books, namespace: c}
spec:
  host: ledger
  gateways: [a/public]
  hostnames: [ledger.example.com]
  rules: [{backends: [{}]}]
""",
    }


def test_an_ingress_gateway_lets_the_outside_reach_a_web_only(up: Up, tmp_path: Path) -> None:
    site_ca = CA.create("public web CA")
    tls = tmp_path / "edge-tls"
    tls.mkdir()
    cert = site_ca.issue_server("shop.example.com")
    (tls / "tls.crt").write_bytes(cert.chain)
    (tls / "tls.key").write_bytes(cert.key)
    (tmp_path / "ca.pem").write_bytes(site_ca.pem)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    revision = up.commit("an ingress gateway", _gateway_intent(port, tls))
    sidecars.wait_until(lambda: up.applied() == revision, timeout=30)

    def curl(host: str) -> str:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(tmp_path / "ca.pem"),
                *(["-k"] if host != "shop.example.com" else []),  # the certificate is shop's
                "--resolve",
                f"{host}:{port}:127.0.0.1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"https://{host}:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return out.stdout

    sidecars.wait_until(lambda: curl("shop.example.com") == "200", timeout=30)
    assert curl("ledger.example.com") == "403", "c/never-from-a refuses the gateway's namespace"

    removed = up.commit("no gateway", dict.fromkeys(_gateway_intent(port, tls)))
    sidecars.wait_until(lambda: up.applied() == removed, timeout=30)
    sidecars.wait_until(lambda: curl("shop.example.com") == "000", timeout=30)


def _egress_intent(port: int) -> dict[str, str | None]:
    return {
        "a/egress.yaml": f"""\
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: egress, namespace: a}}
spec: {{}}
---
apiVersion: weft.dev/v1alpha1
kind: ExternalService
metadata: {{name: partner, namespace: a}}
spec:
  host: localhost
  ports: [{{port: {port}, protocol: http}}]
  allowedFrom: [{{services: [web]}}]
  egressGateway: egress
""",
    }


def test_an_egress_gateway_is_the_way_out_for_its_external_service(up: Up) -> None:
    outside = sidecars.EchoServer("partner")
    port = int(outside.addr.rsplit(":", 1)[1])
    with sidecars.serving(outside):
        revision = up.commit("an egress gateway", _egress_intent(port))
        sidecars.wait_until(lambda: up.applied() == revision, timeout=30)
        url = f"http://localhost:{port}/quote"
        sidecars.wait_until(lambda: up.call("a/web/default", url)[0] == 200, timeout=30)
        status, seen = up.call("a/web/default", url)
        assert isinstance(seen, dict)
        assert seen["service"] == "partner"
        web = json.loads((up.state / "local/workloads/a/web/default/proxyconfig.json").read_text())[
            "outbound"
        ]
        assert web["egress"] == [], "a/web's sidecar goes out only through the gateway"
        assert any(c["service"] == "a/egress" for c in web["clusters"])
        status, body = up.call("b/api/v1", url)
        assert status == 403, "b/api is not in the ExternalService's allowedFrom"
        assert "no route" in str(body)
        removed = up.commit("no egress gateway", dict.fromkeys(_egress_intent(port)))
        sidecars.wait_until(lambda: up.applied() == removed, timeout=30)


def test_a_killed_app_and_sidecar_are_restarted(up: Up) -> None:
    folder = up.state / "local" / "workloads" / "c" / "ledger" / "default"
    sidecar = _pid_of(up, f"--config {folder}/proxyconfig.json")
    os.kill(sidecar, signal.SIGKILL)
    sidecars.wait_until(
        lambda: up.call("b/api/v1", "http://ledger.c:8080/entries")[0] == 200, timeout=20
    )
    assert _pid_of(up, f"--config {folder}/proxyconfig.json") != sidecar


@pytest.mark.slow  # restarts the whole mesh
def test_a_restarted_reconciler_resumes_without_reissuing_certificates(up: Up) -> None:
    certs = sorted((up.state / "identity" / "workloads").glob("*/*/tls.crt"))
    before = {p: p.read_bytes() for p in certs}
    assert up.stop() == 0
    leftovers = subprocess.run(
        ["pgrep", "-f", "--", str(up.state)], capture_output=True, text=True, check=False
    ).stdout
    assert leftovers.strip() == "", "Ctrl-C stops every process weft started"
    again = Up(up.state)
    try:
        assert {p: p.read_bytes() for p in certs} == before, "no certificate was issued again"
        assert again.call("a/web/default", "http://api.b:8080/")[0] == 200
    finally:
        up.proc, up.log = again.proc, again.log  # the module fixture stops it


@pytest.mark.slow  # a second mesh from scratch, killed, then a third
def test_a_weft_killed_outright_leaves_no_process_behind(tmp_path: Path) -> None:
    mesh = Up(tmp_path / "state")
    children = subprocess.run(
        ["pgrep", "-P", str(mesh.proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) >= 4, "the template's sidecars and apps"
    mesh.proc.kill()  # SIGKILL: no chance to stop its children itself
    mesh.proc.wait()
    mesh.log.close()

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in children)

    sidecars.wait_until(all_gone, timeout=30)
