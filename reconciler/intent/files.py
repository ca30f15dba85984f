"""The intent files of one revision: read from a directory or from a git commit's tree.

Both sources yield the same `IntentFile`s (repository-relative path and raw bytes), so loading
never knows where intent came from, and `weft validate --ref` checks exactly what a reconciler
would see at that commit, not the working tree.

Only regular files are intent. A symbolic link (to a file or a folder, inside the repository or
out of it) or a FIFO, socket or device where an intent file would be is refused by name, in both
sources, without opening what it points at: a link to /etc/passwd must not be read, nor its
content quoted in an error, and a FIFO must not hang the reader. In-tree links are refused too,
so a directory and its commit always read the same (git stores a link as its target's path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path

import pygit2

from reconciler.intent.diagnostics import Diagnostic, IntentError, Position, Severity

SUFFIXES = (".yaml", ".yml")

# Kubernetes caps a ConfigMap at 1 MiB; an intent file four times that is a mistake or an
# attack, and refusing it before reading keeps a 50 MB file from costing memory or time.
MAX_FILE_BYTES = 4 * 1024 * 1024
_LINK = 0o120000  # git's file mode for a symbolic link


@dataclasses.dataclass(frozen=True, slots=True)
class IntentFile:
    path: str  # repository-relative, "/"-separated: what diagnostics print
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Every intent file of one revision, and the revision's name."""

    revision: str
    files: tuple[IntentFile, ...]
    refused: tuple[Diagnostic, ...] = ()  # files not read: too big, links, FIFOs


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


def _not_regular(path: str, what: str) -> Diagnostic:
    return Diagnostic(
        Position(path),
        Severity.ERROR,
        f"{what}, not a regular file; Weft reads only regular files as intent and never "
        "follows links",
        "replace it with the file itself (or rename it so it does not end in .yaml)",
    )


_KINDS = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "directory",
}


def _kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "special file")


def _read_regular(full: Path, rel: str) -> IntentFile | Diagnostic:
    """The bytes of `full` if it is (still) a regular file of sane size, else why not.

    O_NOFOLLOW and O_NONBLOCK make the open itself safe should the file have been swapped for a
    link or a FIFO since it was listed; fstat then checks what was actually opened.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(full, flags)
    except OSError as e:
        return Diagnostic(Position(rel), Severity.ERROR, f"cannot read: {e.strerror}")
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _not_regular(rel, f"a {_kind_of(info.st_mode)}")
        if info.st_size > MAX_FILE_BYTES:
            return _too_big(rel, info.st_size)
        return IntentFile(rel, f.read(MAX_FILE_BYTES + 1))


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
    refused: list[Diagnostic] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # os.walk lists a link to a folder among the folders and does not descend into it;
        # refuse it rather than leave intent the user sees in it silently unread.
        for d in dirnames:
            if not d.startswith(".") and (here / d).is_symlink():
                rel = (here / d).relative_to(root).as_posix()
                refused.append(_not_regular(rel, "a symbolic link to a folder"))
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink()
        )
        for name in sorted(filenames):
            full = here / name
            rel = full.relative_to(root).as_posix()
            if not _is_intent_path(tuple(rel.split("/"))):
                continue
            mode = full.lstat().st_mode
            if not stat.S_ISREG(mode):
                refused.append(_not_regular(rel, f"a {_kind_of(mode)}"))
                continue
            read = _read_regular(full, rel)
            if isinstance(read, Diagnostic):
                refused.append(read)
            else:
                files.append(read)
    files.sort(key=lambda f: f.path)
    snapshot = tuple(files)
    return Snapshot(content_revision(snapshot), snapshot, tuple(refused))


@dataclasses.dataclass(frozen=True, slots=True)
class _LinkTo:
    target: bytes  # what a symbolic link in a commit points at, as git stores it


def _links_to_folder(tree: pygit2.Tree, rel: str, link: _LinkTo) -> bool:
    """Whether a link at `rel` points at a folder of `tree`: what directory mode refuses.
    A target outside `tree` cannot be told apart from a file and is never read either way."""
    target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), os.fsdecode(link.target)))
    if target.startswith(("/", "../")) or target in ("..", "."):
        return target == "."
    try:
        return tree[target].type_str == "tree"
    except (KeyError, ValueError, pygit2.GitError):
        return False


def _walk_tree(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str
) -> Iterator[tuple[str, pygit2.Object | _LinkTo]]:
    for entry in tree:
        name = entry.name or ""
        path = f"{prefix}{name}"
        if entry.type_str == "tree":
            if not name.startswith("."):
                yield from _walk_tree(repo, repo[entry.id].peel(pygit2.Tree), f"{path}/")
        elif entry.type_str == "blob":
            # A link is a blob holding its target's path; yield its path only, never its target.
            yield path, (_LinkTo(repo[entry.id].peel(pygit2.Blob).data) if entry.filemode == _LINK
                         else repo[entry.id])  # fmt: skip


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
    refused: list[Diagnostic] = []
    for rel, obj in _walk_tree(repo, tree, ""):
        parts = tuple(rel.split("/"))
        if isinstance(obj, _LinkTo):
            if _is_intent_path(parts):
                refused.append(_not_regular(rel, "a symbolic link"))
            elif not any(p.startswith(".") for p in parts) and _links_to_folder(tree, rel, obj):
                refused.append(_not_regular(rel, "a symbolic link to a folder"))
            continue
        if not _is_intent_path(parts):
            continue
        blob = obj.peel(pygit2.Blob)
        if blob.size > MAX_FILE_BYTES:
            refused.append(_too_big(rel, blob.size))
            continue
        files.append(IntentFile(rel, blob.data))
    files.sort(key=lambda f: f.path)
    return Snapshot(revision, tuple(files), tuple(refused))
