"""The intent files of one revision: read from a directory or from a git commit's tree.

Both sources yield the same `IntentFile`s (repository-relative path and raw bytes), so loading
never knows where intent came from, and `weft validate --ref` checks exactly what a reconciler
would see at that commit, not the working tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pygit2

from reconciler.intent.diagnostics import Diagnostic, IntentError, Position, Severity

SUFFIXES = (".yaml", ".yml")

# Kubernetes caps a ConfigMap at 1 MiB; an intent file four times that is a mistake or an
# attack, and refusing it before reading keeps a 50 MB file from costing memory or time.
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class IntentFile:
    path: str  # repository-relative, "/"-separated: what diagnostics print
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Every intent file of one revision, and the revision's name."""

    revision: str
    files: tuple[IntentFile, ...]
    oversized: tuple[Diagnostic, ...] = ()


def _is_intent_path(parts: tuple[str, ...]) -> bool:
    # Hidden folders (.git, .github) hold other tools' YAML; everything else is intent.
    return parts[-1].endswith(SUFFIXES) and not any(p.startswith(".") for p in parts)


def _too_big(path: str, size: int) -> Diagnostic:
    return Diagnostic(
        Position(path),
        Severity.ERROR,
        f"file is {size} bytes; intent files are limited to {MAX_FILE_BYTES} bytes",
        "split it into several files",
    )


def content_revision(files: tuple[IntentFile, ...]) -> str:
    """A name for a directory's content: the same files always give the same revision."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.path.encode() + b"\0" + hashlib.sha256(f.data).digest())
    return f"workdir@sha256:{digest.hexdigest()}"


def from_directory(root: Path) -> Snapshot:
    if not root.is_dir():
        raise IntentError([Diagnostic(Position(str(root)), Severity.ERROR, "not a directory")])
    files: list[IntentFile] = []
    oversized: list[Diagnostic] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if not _is_intent_path(tuple(rel.split("/"))) or not full.is_file():
                continue
            size = full.stat().st_size
            if size > MAX_FILE_BYTES:
                oversized.append(_too_big(rel, size))
                continue
            files.append(IntentFile(rel, full.read_bytes()))
    files.sort(key=lambda f: f.path)
    snapshot = tuple(files)
    return Snapshot(content_revision(snapshot), snapshot, tuple(oversized))


def _walk_tree(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str
) -> Iterator[tuple[str, pygit2.Object]]:
    for entry in tree:
        name = entry.name or ""
        path = f"{prefix}{name}"
        if entry.type_str == "tree":
            if not name.startswith("."):
                yield from _walk_tree(repo, repo[entry.id].peel(pygit2.Tree), f"{path}/")
        elif entry.type_str == "blob":
            yield path, repo[entry.id]


def from_git(path: Path, ref: str) -> Snapshot:
    """Read the intent at `ref` (branch, tag or commit) of the repository containing `path`.

    Only the folder `path` names is read (the whole repository when it is the top), with file
    paths relative to it, as `from_directory` would. The revision is named
    `<ref>@sha1:<commit>`, the form status and ProxyConfigs carry.
    """
    where = Position(str(path))
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:  # a folder may exist only at `ref`
        probe = probe.parent
    found = pygit2.discover_repository(str(probe))
    if found is None:
        raise IntentError([Diagnostic(where, Severity.ERROR, "not inside a git repository")])
    repo = pygit2.Repository(found)
    try:
        commit = repo.revparse_single(ref).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as e:
        raise IntentError(
            [Diagnostic(where, Severity.ERROR, f"cannot resolve ref {ref!r} to a commit")]
        ) from e
    tree = commit.tree
    top = Path(repo.workdir or found).resolve()
    sub = path.resolve().relative_to(top).as_posix() if path.resolve() != top else ""
    if sub:
        try:
            tree = tree[sub].peel(pygit2.Tree)
        except (KeyError, ValueError, pygit2.GitError) as e:
            raise IntentError(
                [Diagnostic(where, Severity.ERROR, f"{sub!r} is not a folder at {ref!r}")]
            ) from e
    return from_tree(repo, tree, f"{ref}@sha1:{commit.id}")


def from_tree(repo: pygit2.Repository, tree: pygit2.Tree, revision: str) -> Snapshot:
    """Read the intent files under `tree` of `repo`, with paths relative to it, named `revision`.

    The tree walk behind `from_git`; a git source that keeps its own repository (a bare fetch
    cache) calls it directly, so both read a commit the same way, without a checkout.
    """
    files: list[IntentFile] = []
    oversized: list[Diagnostic] = []
    for rel, obj in _walk_tree(repo, tree, ""):
        if not _is_intent_path(tuple(rel.split("/"))):
            continue
        blob = obj.peel(pygit2.Blob)
        if blob.size > MAX_FILE_BYTES:
            oversized.append(_too_big(rel, blob.size))
            continue
        files.append(IntentFile(rel, blob.data))
    files.sort(key=lambda f: f.path)
    return Snapshot(revision, tuple(files), tuple(oversized))
