"""Signed revisions against a real `git daemon`: commits made with `git commit -S` and tags with
`git tag -s`, by OpenPGP keys (gpg, a temporary GNUPGHOME) and SSH keys (ssh-keygen) made here.

Trusted, unsigned, unknown-key, expired-key and bad (tampered) signatures, in branch and tag
mode; the loop refusing an untrusted revision whole with the last good one in force, and status
and the trace naming the commit, the signer and the reason; key files as a ConfigMap mounts them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from reconciler import loop, sources, status, targets, telemetry
from reconciler.compiler import DesiredState
from reconciler.gitsource import GitSource, TrustedKeysError, signatures
from reconciler.gitsource.signatures import TrustedKeys, Verdict
from tests import sidecars
from tests.gitservers import GitDaemon, Upstream
from tests.signing import GpgKey, SshKey, forge_commit, sign_commit, sign_tag

_names = itertools.count()
INTENT = {"mesh.yaml": sidecars.mesh_yaml("sig.local"), "services.yaml": sidecars.WEB_AND_API}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short: gpg-agent's socket path must fit in 108 bytes.
    return tmp_path_factory.mktemp("sig")


@pytest.fixture(scope="module")
def daemon(root: Path) -> Iterator[GitDaemon]:
    served = root / "served"
    served.mkdir()
    with GitDaemon(served) as d:
        yield d


@pytest.fixture(scope="module")
def keys(root: Path) -> Iterator[dict[str, GpgKey | SshKey]]:
    made: dict[str, GpgKey | SshKey] = {
        "alice": GpgKey(root, "alice"),  # trusted
        "mallory": GpgKey(root, "mallory"),  # a real key, not trusted
        "old": GpgKey(root, "old", expired=True),  # trusted, expired since 2021
        "bob": SshKey(root, "bob"),  # trusted
        "eve": SshKey(root, "eve"),  # not trusted
        "retired": SshKey(root, "retired"),  # trusted until 2020 (valid-before)
    }
    yield made
    for key in made.values():
        key.close()


@pytest.fixture(scope="module")
def trusted_dir(root: Path, keys: Mapping[str, GpgKey | SshKey]) -> Path:
    """The trusted keys as a mounted ConfigMap lays them out: `..data` links to a hidden
    timestamped folder, and each key is a symlink through it."""
    mount = root / "trusted-keys"
    data = mount / "..2026_12_04_17_00_00.000000001"
    data.mkdir(parents=True)
    alice, old, bob, retired = (keys[n] for n in ("alice", "old", "bob", "retired"))
    assert isinstance(alice, GpgKey)
    assert isinstance(old, GpgKey)
    assert isinstance(bob, SshKey)
    assert isinstance(retired, SshKey)
    (data / "openpgp.asc").write_text(alice.public_key() + old.public_key())
    (data / "allowed_signers").write_text(
        "# who may sign revisions of the mesh\n"
        + bob.allowed_signer()
        + retired.allowed_signer('namespaces="git",valid-before="20200101"')
    )
    (mount / "..data").symlink_to(data.name)
    for name in ("openpgp.asc", "allowed_signers"):
        (mount / name).symlink_to(f"..data/{name}")
    return mount


@pytest.fixture
def upstream(daemon: GitDaemon) -> Upstream:
    return Upstream(Path(daemon.root), f"mesh-{next(_names)}.git")


@pytest.fixture
def source(
    tmp_path: Path, daemon: GitDaemon, trusted_dir: Path
) -> Iterator[Callable[[Upstream, str], GitSource]]:
    made: list[GitSource] = []

    def make(upstream: Upstream, ref: str = "main") -> GitSource:
        s = GitSource(
            daemon.url(upstream), ref, tmp_path / "cache", None, TrustedKeys.load([trusted_dir])
        )
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def fetch_and_verify(s: GitSource) -> Verdict:
    revision = s.fetch()
    assert revision is not None
    verdict = s.verify(revision)
    assert verdict is not None
    assert verdict.commit == revision.commit
    return verdict


@pytest.mark.parametrize(("who", "fmt"), [("alice", "openpgp"), ("bob", "ssh")])
def test_a_commit_signed_by_a_trusted_key_is_trusted_and_names_its_signer(
    upstream: Upstream,
    source: Callable[[Upstream, str], GitSource],
    keys: Mapping[str, GpgKey | SshKey],
    who: str,
    fmt: str,
) -> None:
    sha = sign_commit(upstream, keys[who], INTENT)
    verdict = fetch_and_verify(source(upstream, "main"))
    assert verdict.trusted, verdict
    assert verdict.reason == "good signature"
    assert verdict.signed_object == f"commit {sha}"
    assert verdict.format == fmt
    key = keys[who]
    if isinstance(key, GpgKey):
        assert verdict.signer == key.uid
        assert verdict.key == key.fingerprint
    else:
        assert verdict.signer == key.principal
        assert verdict.key == key.fingerprint


@pytest.mark.parametrize(
    ("who", "reason", "names_key"),
    [
        (None, "unsigned", False),
        ("mallory", "unknown key: not among the trusted keys", True),
        ("eve", "unknown key: not among the allowed signers", True),
        ("old", "key expired", True),
        ("retired", "key expired (valid-before in the allowed signers)", True),
    ],
)
def test_a_commit_not_signed_by_a_trusted_key_is_refused_with_its_reason(
    *,
    upstream: Upstream,
    source: Callable[[Upstream, str], GitSource],
    keys: Mapping[str, GpgKey | SshKey],
    who: str | None,
    reason: str,
    names_key: bool,
) -> None:
    signer = keys[who] if who else None
    sha = sign_commit(upstream, signer, INTENT)
    verdict = fetch_and_verify(source(upstream, "main"))
    assert not verdict.trusted
    assert verdict.reason == reason
    assert verdict.commit == sha
    if names_key and signer is not None:
        assert verdict.key == signer.fingerprint  # the refusal says which key it was
    if who == "old":
        assert isinstance(signer, GpgKey)
        assert verdict.signer == signer.uid
    if who is None:
        assert verdict.signer == ""
        assert "signed by nobody" in str(verdict)


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_a_signature_over_other_content_is_a_bad_signature(
    upstream: Upstream,
    source: Callable[[Upstream, str], GitSource],
    keys: Mapping[str, GpgKey | SshKey],
    who: str,
) -> None:
    signed = sign_commit(upstream, keys[who], INTENT, "the reviewed change")
    forged = forge_commit(upstream, signed, "something nobody reviewed")
    assert forged != signed
    verdict = fetch_and_verify(source(upstream, "main"))
    assert verdict.commit == forged
    assert not verdict.trusted
    assert verdict.reason.startswith("bad signature"), verdict


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_tag_mode_needs_the_annotated_tag_signed(
    upstream: Upstream,
    source: Callable[[Upstream, str], GitSource],
    keys: Mapping[str, GpgKey | SshKey],
    who: str,
) -> None:
    # The commit is signed by a trusted key; in tag mode that is not enough: the tag must be.
    sha = sign_commit(upstream, keys[who], INTENT)
    upstream.tag("v1.0.0")  # lightweight
    sign_tag(upstream, None, "v1.1.0")  # annotated, unsigned
    sign_tag(upstream, keys["mallory"], "v1.2.0")  # signed by an untrusted key
    sign_tag(upstream, keys[who], "v1.3.0")  # signed by a trusted key
    expected = {
        "v1.0.0": "unsigned: a lightweight tag (tag mode needs `git tag -s`)",
        "v1.1.0": "unsigned: an annotated tag without a signature",
        "v1.2.0": "unknown key: not among the trusted keys",
        "v1.3.0": "good signature",
    }
    for tag, reason in expected.items():
        verdict = fetch_and_verify(source(upstream, tag))
        assert (verdict.signed_object, verdict.reason) == (f"tag {tag}", reason)
        assert verdict.trusted == (tag == "v1.3.0")
        assert verdict.commit == sha
    # A range follows the highest tag; when that one is unsigned it is refused, not skipped
    # for an older signed one.
    verdict = fetch_and_verify(source(upstream, ">=1.0.0"))
    assert (verdict.signed_object, verdict.trusted) == ("tag v1.3.0", True)
    sign_tag(upstream, None, "v1.4.0")
    verdict = fetch_and_verify(source(upstream, "^1.0.0"))
    assert (verdict.signed_object, verdict.trusted) == ("tag v1.4.0", False)


def test_no_trusted_keys_means_signatures_are_not_checked(
    upstream: Upstream, tmp_path: Path, daemon: GitDaemon
) -> None:
    sign_commit(upstream, None, INTENT)
    with GitSource(daemon.url(upstream), "main", tmp_path / "cache") as s:
        revision = s.fetch()
        assert revision is not None
        assert s.verify(revision) is None


class Applies:
    """A target that records what it applied; `maintain` stops the loop after `ticks`."""

    name = "recording"

    def __init__(self, stop: threading.Event | None = None, ticks: int = 1) -> None:
        self.applied: list[str] = []
        self.reported: list[Mapping[str, Any]] = []
        self.stop, self.ticks = stop, ticks

    def observe(self) -> Mapping[str, str]:
        return {}

    def plan(self, desired: DesiredState, observed: Mapping[str, str]) -> targets.Plan:
        return targets.Plan(desired.revision, ())

    def apply(self, plan: targets.Plan) -> list[str]:
        self.applied.append(plan.revision)
        return []

    def prune(self, plan: targets.Plan) -> list[str]:
        return []

    def maintain(self) -> None:
        self.ticks -= 1
        if self.stop is not None and self.ticks <= 0:
            self.stop.set()

    def report(self, status: Mapping[str, Any]) -> None:
        self.reported.append(status)

    def close(self) -> None:
        pass


def test_the_loop_refuses_an_untrusted_revision_whole_and_keeps_the_last_good_one(
    *,
    upstream: Upstream,
    daemon: GitDaemon,
    keys: Mapping[str, GpgKey | SshKey],
    trusted_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(telemetry, "tracer", lambda: provider.get_tracer("test"))
    good = sign_commit(upstream, keys["alice"], INTENT)
    src = sources.open_source(
        daemon.url(upstream), "main", tmp_path / "cache", TrustedKeys.load([trusted_dir])
    )
    target = Applies()
    rec = loop.Reconciler(src, target, tmp_path / "status.json")
    first = src.fetch()
    assert first is not None
    assert rec.reconcile(first) is True
    assert target.applied == [first]
    assert rec.status.signature is not None
    assert rec.status.signature["trusted"] is True

    bad = sign_commit(upstream, keys["eve"], {"services.yaml": "not: [valid"})
    second = src.fetch()
    assert second is not None
    assert bad in second
    assert rec.reconcile(second) is False
    assert target.applied == [first]  # nothing of it applied: not even validated
    s = status.read(tmp_path / "status.json")
    assert s is not None
    assert s.last_applied_revision == first
    assert good in first
    assert s.last_attempted_revision == second
    stalled, ready = s.conditions["Stalled"], s.conditions["Ready"]
    assert (stalled.status, stalled.reason) == (True, "UntrustedRevision")
    assert bad in stalled.message
    eve = keys["eve"]
    assert eve.fingerprint in stalled.message
    assert "unknown key" in stalled.message
    assert (ready.status, ready.reason) == (True, "UntrustedRevision")
    assert f"{first} stays in force" in ready.message
    assert s.signature == {
        "commit": bad,
        "object": f"commit {bad}",
        "trusted": False,
        "reason": "unknown key: not among the allowed signers",
        "signer": None,
        "key": eve.fingerprint,
        "format": "ssh",
    }
    text = status.render(s)
    assert f"signature:               commit {bad} REFUSED: unknown key" in text
    assert f"signed by an unknown signer (ssh key {eve.fingerprint})" in text
    # What the Kubernetes target publishes (the weft-status ConfigMap and its Event) is this.
    assert target.reported[-1]["signature"]["commit"] == bad
    # The trace of the refused reconcile says the same.
    verify = [x for x in spans.get_finished_spans() if x.name == "verify"]
    assert len(verify) == 2
    attributes = dict(verify[-1].attributes or {})
    assert attributes["weft.signature.commit"] == bad
    assert attributes["weft.signature.trusted"] is False
    assert attributes["weft.signature.signer"] == "none"
    assert attributes["weft.signature.key"] == eve.fingerprint
    assert str(attributes["weft.signature.reason"]).startswith("unknown key")
    assert not any(x.name == "validate" for x in spans.get_finished_spans()[-3:])

    # An untrusted revision is not retried (it cannot become trusted by itself); the next
    # trusted one is applied.
    stop = threading.Event()
    target.stop, target.ticks = stop, 1
    rec.run(stop, threading.Event(), poll_seconds=0.01)
    assert target.applied == [first]
    third = sign_commit(upstream, keys["bob"], INTENT, "signed again")
    stop.clear()
    target.ticks = 1
    rec.run(stop, threading.Event(), poll_seconds=0.01)
    assert target.applied[-1].endswith(third)
    assert rec.status.conditions["Stalled"].status is False


def test_keys_are_read_again_so_a_rotated_configmap_applies_without_restart(
    upstream: Upstream,
    daemon: GitDaemon,
    keys: Mapping[str, GpgKey | SshKey],
    tmp_path: Path,
) -> None:
    bob, eve = keys["bob"], keys["eve"]
    assert isinstance(bob, SshKey)
    assert isinstance(eve, SshKey)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(bob.allowed_signer())
    sign_commit(upstream, eve, INTENT)
    with GitSource(
        daemon.url(upstream), "main", tmp_path / "cache", None, TrustedKeys.load([allowed])
    ) as s:
        revision = s.fetch()
        assert revision is not None
        verdict = s.verify(revision)
        assert verdict is not None
        assert not verdict.trusted
        allowed.write_text(bob.allowed_signer() + eve.allowed_signer())
        verdict = s.verify(revision)
        assert verdict is not None
        assert verdict.trusted
        assert verdict.signer == eve.principal
        allowed.unlink()  # keys gone: fail closed, nothing is trusted
        verdict = s.verify(revision)
        assert verdict is not None
        assert not verdict.trusted
        assert verdict.reason.startswith("the trusted keys cannot be read")


def test_key_files_that_cannot_verify_anything_are_refused_naming_file_and_line(
    tmp_path: Path, keys: Mapping[str, GpgKey | SshKey]
) -> None:
    bob = keys["bob"]
    assert isinstance(bob, SshKey)
    bad = tmp_path / "allowed_signers"
    bad.write_text(bob.allowed_signer() + "\nbob@example.invalid not-a-key-type AAAA\n")
    with pytest.raises(TrustedKeysError, match=rf"^{bad}:3: not an allowed-signers line"):
        TrustedKeys.load([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrustedKeysError, match="no trusted keys in"):
        TrustedKeys.load([empty])
    with pytest.raises(TrustedKeysError, match="no such file"):
        TrustedKeys.load([tmp_path / "missing"])
    private = tmp_path / "private"
    private.write_text(bob.path.read_text())
    with pytest.raises(TrustedKeysError, match="holds a private key"):
        TrustedKeys.load([private])


def test_split_signed_takes_the_signature_from_the_first_block_line() -> None:
    raw = b"object 1\ntype commit\n\nmessage\n-----BEGIN SSH SIGNATURE-----\nAAAA\n"
    payload, signature = signatures.split_signed(raw)
    assert payload == b"object 1\ntype commit\n\nmessage\n"
    assert signature == b"-----BEGIN SSH SIGNATURE-----\nAAAA\n"
    assert signatures.split_signed(b"no signature\n") == (b"no signature\n", None)


def test_weft_run_refuses_to_start_with_unusable_trusted_keys(tmp_path: Path) -> None:
    bad = tmp_path / "keys"
    bad.write_text("this is not a key\n")
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "run", "--repo", "git://127.0.0.1:1/x.git",
         "--state-dir", str(tmp_path / "state"), "--trusted-keys", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "WEFT_TRUSTED_KEYS": ""},
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"weft run: {bad}:1: not an allowed-signers line" in done.stderr


def test_weft_up_source_checks_a_local_repository_the_same_way(
    tmp_path: Path, keys: Mapping[str, GpgKey | SshKey], trusted_dir: Path
) -> None:
    from reconciler import localrepo  # noqa: PLC0415

    bob = keys["bob"]
    assert isinstance(bob, SshKey)
    upstream = Upstream(tmp_path / "served", "local.git")
    sign_commit(upstream, bob, INTENT)
    src = localrepo.LocalRepoSource(upstream.work, "main", TrustedKeys.load([trusted_dir]))
    revision = src.fetch()
    assert revision is not None
    verdict = src.verify(revision)
    assert verdict is not None
    assert (verdict.trusted, verdict.signer) == (True, bob.principal)
    sign_tag(upstream, None, "v2.0.0")
    tagged = localrepo.LocalRepoSource(upstream.work, "v2.0.0", TrustedKeys.load([trusted_dir]))
    revision = tagged.fetch()
    assert revision is not None
    verdict = tagged.verify(revision)
    assert verdict is not None
    assert (verdict.signed_object, verdict.trusted) == ("tag v2.0.0", False)
    sign_commit(upstream, None, {"x.yaml": ""})
    revision = src.fetch()
    assert revision is not None
    verdict = src.verify(revision)
    assert verdict is not None
    assert (verdict.trusted, verdict.reason) == (False, "unsigned")
