"""A full state disk (ENOSPC, on a real tmpfs of a few KiB) must not stop the reconcile loop
nor leave half-written status files; found by the soak (bench/soak.py), where it killed
`weft run` and every process it ran."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import loop, status
from reconciler.intent.files import Snapshot
from tests.test_reconcile_status import NothingToDo

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs"
)


@contextlib.contextmanager
def tiny_disk(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(disk: Path) -> None:
    with contextlib.suppress(OSError), (disk / "filler").open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


class Unreachable:
    """A source whose remote is down: every fetch fails, so the loop writes FetchFailed."""

    def fetch(self) -> str | None:
        raise OSError("the git server is gone")

    def verify(self, revision: str) -> None:
        return None

    def snapshot(self, revision: str) -> Snapshot:
        raise AssertionError("never reached")


def test_a_full_state_disk_neither_stops_the_loop_nor_leaves_temporary_files(
    tmp_path: Path,
) -> None:
    with tiny_disk(tmp_path / "state") as disk:
        previous = status.Status(last_applied_revision="main@sha1:" + "a" * 40)
        status.write(disk / "status.json", previous)
        fill(disk)
        stop = threading.Event()
        rec = loop.Reconciler(Unreachable(), NothingToDo(stop, ticks=3), disk / "status.json")
        rec.run(stop, threading.Event(), poll_seconds=0.01)  # returns: it did not die
        assert rec.status.conditions["Stalled"].reason == "FetchFailed"
        left = sorted(p.name for p in disk.iterdir())
        assert left == ["filler", "status.json"], left  # no .status.* temporary file
        kept = status.read(disk / "status.json")
        assert kept is not None
        assert kept.last_applied_revision == previous.last_applied_revision
        (disk / "filler").unlink()
        stop.clear()
        rec = loop.Reconciler(Unreachable(), NothingToDo(stop, ticks=1), disk / "status.json")
        rec.run(stop, threading.Event(), poll_seconds=0.01)
        written = status.read(disk / "status.json")
        assert written is not None
        assert written.conditions["Stalled"].reason == "FetchFailed"  # written again once freed
