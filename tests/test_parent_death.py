"""The check that closes the parent-death signal's race: a child whose parent is no longer the
weft that started it does not run its command. Real processes, no network."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from reconciler.targets.local import parentdeath


def test_the_command_runs_while_its_parent_is_the_one_expected(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = subprocess.run([*parentdeath.still_parent(), "touch", str(marker)], check=False)
    assert done.returncode == 0
    assert marker.exists()


def test_a_child_whose_parent_is_not_the_one_expected_never_runs_its_command(
    tmp_path: Path,
) -> None:
    # As after a weft killed between the fork and setpriv: the child now has another parent.
    marker = tmp_path / "ran"
    other = os.getppid()
    done = subprocess.run([*parentdeath.still_parent(other), "touch", str(marker)], check=False)
    assert done.returncode == 125
    assert not marker.exists()


def _fork_then_run(marker: Path, parent_exits: bool) -> None:
    """A weft stand-in builds the prefix for itself, forks, and (with `parent_exits`) dies
    before its child reaches setpriv, as a weft killed in that window would. The child then
    runs the prefix and `touch marker`."""
    repo = Path(__file__).resolve().parent.parent
    script = f"""
import os, sys, time
sys.path.insert(0, {str(repo)!r})
from reconciler.targets.local import parentdeath
chain = [*parentdeath.die_with_parent(), "touch", {str(marker)!r}]
if os.fork() == 0:
    time.sleep(0.3)  # the parent is gone by now when it exits at once
    os.execv(chain[0], chain)
if not {parent_exits!r}:
    time.sleep(1.0)
"""
    subprocess.run([sys.executable, "-c", script], check=True)


def _appears(marker: Path, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if marker.exists():
            return True
        time.sleep(0.05)
    return False


def test_a_child_whose_parent_died_before_setpriv_never_runs_its_command(tmp_path: Path) -> None:
    # The control: with the parent alive throughout, the same chain runs the command.
    alive = tmp_path / "with-parent"
    _fork_then_run(alive, parent_exits=False)
    assert _appears(alive)
    # The race: the parent died before the death signal was set, so no signal ever comes;
    # the check sees another parent and refuses.
    orphan = tmp_path / "orphan"
    _fork_then_run(orphan, parent_exits=True)
    assert not _appears(orphan)
