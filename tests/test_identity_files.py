"""The file store: modes, atomic publication, and what a crash at any point leaves behind."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest

from reconciler import identity
from reconciler.compiler.identities import Identity
from reconciler.identity import atomic

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(hours=24)
WEB = Identity("spiffe://test.local/ns/a/sa/web", "a", "web", ("a/web",))
API = Identity("spiffe://test.local/ns/b/sa/api", "b", "api", ("b/api",))


def ensure(store: identity.FileStore, now: datetime.datetime = T0) -> identity.IssueReport:
    return identity.ensure(store, [WEB, API], trust_domain="test.local", lifetime=DAY, now=now)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keys_are_0600_and_directories_0700(tmp_path: Path) -> None:
    store = identity.FileStore(tmp_path / "state")
    ensure(store)
    keys = sorted(p for p in store.root.rglob("*.key") if not p.is_symlink())
    assert sorted(p.name for p in keys) == ["ca.key", "tls.key", "tls.key"]
    assert {mode(p) for p in keys} == {0o600}
    dirs = [p for p in store.root.rglob("*") if p.is_dir() and not p.is_symlink()]
    assert dirs
    assert {mode(p) for p in dirs} == {0o700}
    assert mode(store.root) == 0o700
    assert mode(store.root / "workloads" / "a" / "web" / "tls.crt") == 0o644


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = identity.FileStore(tmp_path / "state")
        ensure(store)
    finally:
        os.umask(old)
    assert mode(store.root / "workloads" / "a" / "web" / "tls.key") == 0o600
    assert mode(store.root / "workloads" / "a" / "web") == 0o700


def test_workload_files_are_published_through_one_symlink(tmp_path: Path) -> None:
    store = identity.FileStore(tmp_path / "state")
    ensure(store)
    web = store.root / "workloads" / "a" / "web"
    assert os.readlink(web / "tls.key") == "..data/tls.key"
    version = os.readlink(web / "..data")
    assert version.startswith("..v.")
    assert sorted(p.name for p in web.iterdir()) == sorted(
        ["..data", version, "ca.crt", "tls.crt", "tls.key"]
    )


def test_a_rewrite_replaces_the_version_and_leaves_no_old_one(tmp_path: Path) -> None:
    store = identity.FileStore(tmp_path / "state")
    ensure(store)
    web = store.root / "workloads" / "a" / "web"
    first = os.readlink(web / "..data")
    ensure(store, T0 + DAY)  # everything is due: reissued
    second = os.readlink(web / "..data")
    assert first != second
    assert not (web / first).exists()


def crash_on(monkeypatch: pytest.MonkeyPatch, name: str, after: int = 0) -> None:
    """Make os.<name> raise after `after` successful calls, like a crash at that point."""
    real = getattr(os, name)
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize(
    ("call", "after"),
    [
        pytest.param("fsync", 0, id="while-writing-the-first-file"),
        pytest.param("fsync", 1, id="between-certificate-and-key"),
        pytest.param("replace", 0, id="before-publishing"),
    ],
)
def test_a_crash_while_writing_leaves_the_old_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, after: int
) -> None:
    path = tmp_path / "w"
    atomic.write_directory(path, {"tls.crt": (b"old cert", 0o644), "tls.key": (b"old key", 0o600)})
    with monkeypatch.context() as m:
        crash_on(m, call, after)
        with pytest.raises(OSError, match="simulated crash"):
            atomic.write_directory(
                path, {"tls.crt": (b"new cert", 0o644), "tls.key": (b"new key", 0o600)}
            )
    assert atomic.read_directory(path, ("tls.crt", "tls.key")) == {
        "tls.crt": b"old cert",
        "tls.key": b"old key",
    }
    assert (path / "tls.key").read_bytes() == b"old key"
    versions = [p for p in path.iterdir() if p.name.startswith("..v.")]
    assert len(versions) == 1  # the half-written version was removed


def test_a_crash_while_replacing_a_file_leaves_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    atomic.write_file(path, b"old", 0o644)
    with monkeypatch.context() as m:
        crash_on(m, "replace")
        with pytest.raises(OSError, match="simulated crash"):
            atomic.write_file(path, b"new", 0o644)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_a_crash_during_issuance_is_repaired_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = identity.FileStore(tmp_path / "state")
    identity.ca.init(store, "test.local", T0)
    with monkeypatch.context() as m:
        crash_on(m, "replace", after=2)  # some workloads published, then the crash
        with pytest.raises(OSError, match="simulated crash"):
            ensure(store)
    report = ensure(store)
    assert report.reused + len(report.issued) == 2
    for key in store.workloads():
        stored = store.read_workload(key)
        assert stored is not None
        assert stored.key_matches


def test_an_unreadable_or_mismatched_workload_is_reissued(tmp_path: Path) -> None:
    store = identity.FileStore(tmp_path / "state")
    ensure(store)
    web = store.root / "workloads" / "a" / "web"
    version = web / os.readlink(web / "..data")
    (version / "tls.key").write_bytes((store.root / "workloads/b/api/tls.key").read_bytes())
    (
        store.root
        / "workloads/b/api"
        / os.readlink(store.root / "workloads/b/api/..data")
        / "tls.crt"
    ).write_bytes(b"garbage")
    report = ensure(store)
    assert {(d.key.namespace, d.reason) for d in report.issued} == {
        ("a", "stored key missing or not the certificate's"),
        ("b", "stored certificate unreadable"),
    }


def test_names_that_are_not_directory_names_are_refused(tmp_path: Path) -> None:
    store = identity.FileStore(tmp_path / "state")
    with pytest.raises(identity.IdentityError, match="cannot name a directory"):
        store.read_workload(identity.WorkloadKey("..", "x"))


def test_a_corrupt_trust_state_is_reported_not_guessed(tmp_path: Path) -> None:
    store = identity.FileStore(tmp_path / "state")
    ensure(store)
    (store.root / "state.json").write_text("{")
    with pytest.raises(identity.IdentityError, match=r"state\.json is not a Weft trust state"):
        ensure(store)
