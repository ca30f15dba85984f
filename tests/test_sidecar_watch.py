"""The sidecar's inotify watch: which writes it reports, which it ignores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.identity import atomic
from reconciler.sidecar import watch


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "certs").mkdir()
    return tmp_path


@pytest.fixture
def changes(folder: Path) -> Iterator[watch.Watch]:
    w = watch.start([folder / "config.json", folder / "certs" / "tls.crt"])
    try:
        yield w
    finally:
        w.close()


def test_a_file_renamed_into_place_is_reported(folder: Path, changes: watch.Watch) -> None:
    temp = folder / ".proxyconfig.123"
    temp.write_text('{"new": 1}')
    os.replace(temp, folder / "config.json")
    assert changes.changed(5) == watch.Changes(in_place=False)
    assert changes.changed(0.05) is None, "one change, reported once"


def test_a_file_written_in_place_is_reported_when_closed(
    folder: Path, changes: watch.Watch
) -> None:
    with (folder / "config.json").open("w") as f:
        f.write("{")
        f.flush()
        assert changes.changed(0.05) is None, "not while it is half written"
    assert changes.changed(5) == watch.Changes(in_place=True)


def test_other_names_are_ignored(folder: Path, changes: watch.Watch) -> None:
    (folder / "listeners.json").write_text("{}")
    (folder / ".proxyconfig.456").write_text("{}")
    (folder / "certs" / "tls.crt.bak").write_text("x")
    assert changes.changed(0.1) is None


def test_a_data_symlink_swap_is_reported(folder: Path, changes: watch.Watch) -> None:
    atomic.write_directory(folder / "certs", {"tls.crt": (b"a", 0o644), "tls.key": (b"b", 0o600)})
    assert changes.changed(5) is not None
    changes.settle(0.05)
    atomic.write_directory(folder / "certs", {"tls.crt": (b"c", 0o644), "tls.key": (b"d", 0o600)})
    assert changes.changed(5) == watch.Changes(in_place=False)  # only `..data` moved


def test_settle_returns_once_writes_stop(folder: Path, changes: watch.Watch) -> None:
    (folder / "config.json").write_text("{}")
    assert changes.changed(5) is not None
    changes.settle(0.05)
    assert changes.changed(0.05) is None


def test_a_missing_folder_is_a_watch_error(tmp_path: Path) -> None:
    with pytest.raises(watch.WatchError, match=r"inotify_add_watch .*nowhere"):
        watch.start([tmp_path / "nowhere" / "config.json"])
