"""PERMISSIVE mode: plaintext from outside the mesh is accepted on the same port as mTLS.

The first bytes decide: a TLS handshake is mesh traffic with a verified identity; anything
else is plaintext with no identity, which only the Mesh default can admit.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import sidecars
from tests.pki import CA

TD = "permissive.local"


def intent(default: str) -> dict[str, str]:
    return {
        "mesh.yaml": sidecars.mesh_yaml(TD, mtls="PERMISSIVE", defaultPolicy=default),
        "services.yaml": sidecars.WEB_AND_API,
        "policies.yaml": sidecars.ALLOW_A_TO_B,
    }


class Pair:
    def __init__(self, tmp: Path, default: str) -> None:
        self.ca = CA.create()
        self.configs = sidecars.compiled(tmp, intent(default))
        self.app = sidecars.EchoServer("api")

    def start(self) -> None:
        self.api = sidecars.start(
            self.configs[("b", "api")],
            sidecars.identity(self.ca, TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": self.app.addr}},
        )
        self.web = sidecars.start(
            self.configs[("a", "web")],
            sidecars.identity(self.ca, TD, "a", "web"),
            {"outboundHttp": "127.0.0.1:0"},
            {"b/api": [self.api.bound()["inbound:http"]]},
        )

    def stop(self) -> None:
        self.web.shutdown(0.1)
        self.api.shutdown(0.1)


@pytest.fixture(params=["deny", "allow"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path, request.param)
    with sidecars.serving(p.app):
        p.start()
        try:
            yield p
        finally:
            p.stop()


def curl(url: str, host: str) -> int:
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-H",
            f"Host: {host}",
            "-w",
            "%{http_code}",
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stdout or 0)


def test_mesh_peers_still_use_mtls_and_their_identity(pair: Pair) -> None:
    assert curl(f"http://{pair.web.bound()['outbound:http']}/x", "api.b:8080") == 200
    ((key, _),) = json.loads(pair.api.stats())["requests"]
    assert key["source"] == f"spiffe://{TD}/ns/a/sa/web"


def test_plaintext_has_no_identity_so_only_the_default_can_admit_it(pair: Pair) -> None:
    default = pair.configs[("b", "api")]["inbound"][0]["defaultAction"]
    code = curl(f"http://{pair.api.bound()['inbound:http']}/x", "api.b")
    assert code == (200 if default == "ALLOW" else 403)
    ((key, _),) = json.loads(pair.api.stats())["requests"]
    assert key["source"] == "unknown"
    assert pair.app.hits == (1 if default == "ALLOW" else 0)


def test_strict_is_not_permissive(tmp_path: Path) -> None:
    strict = {
        **intent("allow"),
        "mesh.yaml": intent("allow")["mesh.yaml"].replace("PERMISSIVE", "STRICT"),
    }
    config = sidecars.compiled(tmp_path, strict)[("b", "api")]
    app = sidecars.EchoServer("api")
    with sidecars.serving(app):
        api = sidecars.start(
            config,
            sidecars.identity(CA.create(), TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": app.addr}},
        )
        try:
            assert curl(f"http://{api.bound()['inbound:http']}/x", "api.b") == 0
            assert app.hits == 0
        finally:
            api.shutdown(0.1)
