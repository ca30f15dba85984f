"""The loop's schedule: failed applies back off exponentially, and `resync_seconds` reconciles
an unchanged revision again (how drift in a cluster is reverted without a new commit).

The target and source are stand-ins (this is the loop's own logic, no I/O); the intent is a real
directory, validated and compiled for real.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler import hostport, intent, loop, targets
from reconciler.cli import serve
from reconciler.compiler import DesiredState
from tests import sidecars
from tests.conftest import write_repo

REVISION = "main@sha1:" + "b" * 40


class Unchanging:
    """Reports its one revision on the first fetch, then nothing new, like a quiet remote."""

    def __init__(self, root: Path) -> None:
        self.root, self.fetched = root, False

    def fetch(self) -> str | None:
        if self.fetched:
            return None
        self.fetched = True
        return REVISION

    def verify(self, revision: str) -> None:
        return None  # no trusted keys: signatures not required

    def snapshot(self, revision: str) -> intent.files.Snapshot:
        return intent.files.from_directory(self.root)


class Target:
    """Fails its first `failures` applies; counts reconciles."""

    name = "stand-in"

    def __init__(self, failures: int) -> None:
        self.failures, self.applies = failures, 0

    def observe(self) -> Mapping[str, str]:
        return {}

    def plan(self, desired: DesiredState, observed: Mapping[str, str]) -> targets.Plan:
        return targets.Plan(desired.revision, (targets.Change("update", "x"),))

    def apply(self, plan: targets.Plan) -> list[str]:
        self.applies += 1
        if self.applies <= self.failures:
            raise RuntimeError("the API server went away")
        return ["x"]

    def prune(self, plan: targets.Plan) -> list[str]:
        return []

    def maintain(self) -> None:
        pass

    def report(self, status: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Ticks(threading.Event):
    """The loop's wake event: records each wait instead of sleeping; stops after `n` waits."""

    def __init__(self, stop: threading.Event, n: int) -> None:
        super().__init__()
        self.stop, self.n, self.waits = stop, n, list[float]()

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        if len(self.waits) >= self.n:
            self.stop.set()
        return False


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_repo(
        tmp_path / "repo",
        {"mesh.yaml": sidecars.mesh_yaml("loop.local"), "services.yaml": sidecars.WEB_AND_API},
    )


def test_failed_applies_back_off_then_the_poll_resumes(repo: Path, tmp_path: Path) -> None:
    target = Target(failures=3)
    rec = loop.Reconciler(Unchanging(repo), target, tmp_path / "status.json")
    stop = threading.Event()
    wake = Ticks(stop, 5)
    rec.run(stop, wake, poll_seconds=10.0)
    assert target.applies == 4
    assert rec.status.last_applied_revision == REVISION
    # ±10 % jitter around 20, 40, 80 s after the failures, then the poll interval again.
    nominal = [20.0, 40.0, 80.0, 10.0, 10.0]
    assert all(0.89 * n <= w <= 1.11 * n for w, n in zip(wake.waits, nominal, strict=True))


def test_resync_reconciles_the_applied_revision_again(repo: Path, tmp_path: Path) -> None:
    target = Target(failures=0)
    rec = loop.Reconciler(Unchanging(repo), target, tmp_path / "status.json")
    stop = threading.Event()
    rec.run(stop, Ticks(stop, 4), poll_seconds=1.0, resync_seconds=0.0)
    assert target.applies == 4  # the first apply, then one per tick with nothing fetched


def test_without_resync_an_unchanged_revision_is_left_alone(repo: Path, tmp_path: Path) -> None:
    target = Target(failures=0)
    rec = loop.Reconciler(Unchanging(repo), target, tmp_path / "status.json")
    stop = threading.Event()
    rec.run(stop, Ticks(stop, 4), poll_seconds=1.0)
    assert target.applies == 1


class Unreachable(Target):
    """Applies once, then its upkeep fails: the API server went away after the first apply."""

    def maintain(self) -> None:
        if self.applies:
            raise ConnectionError("connection refused")


def test_failed_upkeep_backs_off_and_is_reported_not_fatal(repo: Path, tmp_path: Path) -> None:
    target = Unreachable(failures=0)
    rec = loop.Reconciler(Unchanging(repo), target, tmp_path / "status.json")
    stop = threading.Event()
    wake = Ticks(stop, 3)
    rec.run(stop, wake, poll_seconds=10.0)  # returns: the failures did not escape the loop
    stalled = rec.status.conditions["Stalled"]
    assert (stalled.status, stalled.reason) == (True, "MaintenanceFailed")
    assert "connection refused" in stalled.message
    nominal = [20.0, 40.0, 80.0]
    assert all(0.89 * n <= w <= 1.11 * n for w, n in zip(wake.waits, nominal, strict=True))


def test_the_metrics_server_answers_without_touching_the_target(repo: Path, tmp_path: Path) -> None:
    rec = loop.Reconciler(Unchanging(repo), Unreachable(failures=0), tmp_path / "status.json")
    assert rec.reconcile(REVISION)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.metrics_server(hostport.HostPort("127.0.0.1", port), rec)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        assert resp.read() == b"ok\n"
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert 'weft_reconciles_total{result="applied"} 1' in resp.read().decode()
