"""Crash-safe writes for the file store: a reader, or a restart, sees old contents or new.

A single file is written to a temporary name beside it, flushed to disk, and renamed over the
old one. A set of files that must change together (a certificate and its key) is written the way
Kubernetes writes Secret volumes: into a fresh hidden version directory, flushed, then published
by atomically replacing the `..data` symlink; the visible names (`tls.crt`) are symlinks through
`..data`. A sidecar that resolves `..data` once and reads both files from there can never pair a
new certificate with an old key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

DATA = "..data"
PRIVATE_DIR = 0o700


def private_directory(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700; tighten it if it already exists."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        os.chmod(p, PRIVATE_DIR)  # mkdir's mode is masked by the umask
    os.chmod(path, PRIVATE_DIR)


def write_file(path: Path, data: bytes, mode: int) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        _fill(fd, data, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _sync_directory(path.parent)


def write_directory(path: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Publish `files` (name -> (content, mode)) in `path` all at once."""
    private_directory(path)
    version = Path(tempfile.mkdtemp(prefix="..v.", dir=path))  # mode 0700
    try:
        for name, (data, mode) in files.items():
            fd = os.open(version / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
            _fill(fd, data, mode)
        _sync_directory(version)
        _symlink(path / DATA, version.name)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    for name in files:
        if not (path / name).is_symlink():
            _symlink(path / name, f"{DATA}/{name}")
    _sync_directory(path)
    for stale in _versions(path):
        if stale != version:
            shutil.rmtree(stale, ignore_errors=True)


def read_directory(path: Path, names: tuple[str, ...]) -> dict[str, bytes] | None:
    """The files of the version `..data` points at now (one version, never a mix); None if
    nothing has been published in `path`."""
    for _ in range(3):  # the version can be replaced between readlink and open: read again
        try:
            version = path / os.readlink(path / DATA)
        except FileNotFoundError:
            return None
        try:
            return {name: (version / name).read_bytes() for name in names}
        except FileNotFoundError:
            continue
    return None


def _fill(fd: int, data: bytes, mode: int) -> None:
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # explicit: the creation mode is masked by the umask
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _symlink(link: Path, target: str) -> None:
    temp = link.with_name(f"{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    os.symlink(target, temp)
    os.replace(temp, link)


def _versions(path: Path) -> Iterator[Path]:
    return (p for p in path.iterdir() if p.name.startswith("..v.") and p.is_dir())


def _sync_directory(path: Path) -> None:
    """Make a rename in `path` durable: the new name survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
