"""`weft run --repo git://…`: the reconciler following a real git server, woken by a webhook.

The poll interval is a minute, so an apply within seconds of a push can only be the webhook's
doing; a forged webhook changes nothing; a git server that goes away leaves the last good
revision serving, and it catches up when the server returns.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import status as status_
from tests import sidecars
from tests.gitservers import GitDaemon, Upstream, free_port

SECRET = "webhook-secret-for-tests"
ALLOW = sidecars.ALLOW_A_TO_B
SERVICES = sidecars.WEB_AND_API.replace(
    "spec: {ports: [{name: http, port: 8080}]}",
    "spec: {ports: [{name: http, port: 8080}], local: {command: [weft, demo-app]}}",
)


class Run:
    def __init__(self, tmp: Path) -> None:
        self.upstream = Upstream(tmp / "git", "mesh.git")
        self.upstream.commit(
            {
                "mesh.yaml": sidecars.mesh_yaml("remote.local"),
                "services.yaml": SERVICES,
                "policies.yaml": ALLOW,
            },
            "seed",
        )
        self.daemon = GitDaemon(tmp / "git")
        self.state = tmp / "state"
        self.hook_port = free_port()
        self.log = (tmp / "run.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler.cli",
                "run",
                "--repo",
                self.daemon.url(self.upstream),
                "--state-dir",
                str(self.state),
                "--poll",
                "60",
                "--webhook",
                f"127.0.0.1:{self.hook_port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WEFT_WEBHOOK_SECRET": SECRET},
        )

    def status(self) -> status_.Status | None:
        return status_.read(self.state / "status.json")

    def applied(self) -> str | None:
        s = self.status()
        return s.last_applied_revision if s else None

    def call(self, url: str) -> int:
        ports: dict[str, int] = json.loads((self.state / "local" / "ports.json").read_text())
        proxy = f"http://127.0.0.1:{ports['outbound:a/web/default']}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
        try:
            with opener.open(url, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def hook(self, body: bytes, secret: str = SECRET) -> int:
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.hook_port}/hook",
            data=body,
            method="POST",
            headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return e.code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        self.log.close()
        self.daemon.close()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_a_push_announced_by_the_webhook_is_applied_and_a_forged_one_is_not(run: Run) -> None:
    sidecars.wait_until(lambda: (run.applied() or "").startswith("main@sha1:"), timeout=60)
    sidecars.wait_until(lambda: run.call("http://api.b:8080/") == 200, timeout=30)
    seeded = run.applied()

    sha = run.upstream.commit({"policies.yaml": None}, "close b to a")
    assert run.hook(b'{"ref": "refs/heads/main"}', secret="not-the-secret") == 401
    assert run.applied() == seeded, "a forged webhook changes nothing"
    assert run.hook(b'{"ref": "refs/heads/main"}') == 202
    sidecars.wait_until(lambda: run.applied() == f"main@sha1:{sha}", timeout=20)
    sidecars.wait_until(lambda: run.call("http://api.b:8080/") == 403, timeout=10)


def test_an_unreachable_git_server_leaves_the_last_good_revision_serving(run: Run) -> None:
    sidecars.wait_until(lambda: (run.applied() or "").startswith("main@sha1:"), timeout=60)
    sidecars.wait_until(lambda: run.call("http://api.b:8080/") == 200, timeout=30)
    good = run.applied()
    port = run.daemon.port
    run.daemon.close()
    assert run.hook(b"{}") == 202
    sidecars.wait_until(
        lambda: (s := run.status()) is not None and s.conditions["Stalled"].reason == "FetchFailed",
        timeout=20,
    )
    status: Any = run.status()
    assert status.last_applied_revision == good
    assert run.call("http://api.b:8080/") == 200, (
        "traffic keeps flowing under the last good revision"
    )
    run.daemon = GitDaemon(run.daemon.root, port=port)
    sha = run.upstream.commit({"policies.yaml": None}, "close b to a")
    assert run.hook(b"{}") == 202
    sidecars.wait_until(lambda: run.applied() == f"main@sha1:{sha}", timeout=30)
