"""Noticing at once that the agent's files changed: inotify on the directories holding them.

Writers replace these files rather than edit them: the local target renames a new
`proxyconfig.json` over the old one, identity swaps a `..data` symlink to publish a certificate
and its key together, and Kubernetes does the same for mounted Secrets and ConfigMaps. A watch
on a file would stay on the replaced inode, so the watch is on each file's directory, and only
events naming a watched file (or `..data`) count: writers' temporary files are ignored.

Linux only, through libc's `inotify_init1` and `inotify_add_watch` (the standard library has no
inotify). Where they are missing or refused (`fs.inotify.max_user_instances` reached), `start`
returns None and the agent's poll is all there is. The poll stays on anyway, for what inotify
cannot see: a watched directory replaced wholesale, or an overflowing event queue.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import select
import struct
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

# <sys/inotify.h>
_IN_CLOSE_WRITE = 0x00000008  # a file written in place is complete only when closed
_IN_MOVED_TO = 0x00000080  # rename over the old name: the atomic writers
_IN_CREATE = 0x00000100  # a symlink made in place (`ln -s`)
_IN_Q_OVERFLOW = 0x00004000  # events were lost: assume anything changed
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

# Kubernetes-style publication: the visible names are symlinks through this one.
DATA = "..data"


class WatchError(OSError):
    """inotify is missing or refused; the reason names the directory and the errno."""


@dataclasses.dataclass(frozen=True, slots=True)
class Changes:
    """Watched names changed. `in_place`: some were written where they stand rather than
    renamed into place, so more writes of the same set may follow."""

    in_place: bool


class Watch:
    """An inotify instance watching some directories for some names in each."""

    def __init__(self, fd: int, names: Mapping[int, frozenset[str]]) -> None:
        self._fd, self._names = fd, names

    def changed(self, timeout: float) -> Changes | None:
        """What changed, as soon as a watched name does; None if none did within `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._fd], [], [], left)
            if readable and (found := self._relevant(self._read())) is not None:
                return found
        return None

    def settle(self, quiet: float, longest: float = 1.0) -> None:
        """Wait until watched names have been quiet for `quiet` s (at most `longest` s), so a
        set of files written one by one is read once, whole, rather than half new."""
        deadline = time.monotonic() + longest
        while time.monotonic() < deadline and self.changed(quiet) is not None:
            pass

    def _read(self) -> bytes:
        try:
            return os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return b""

    def _relevant(self, data: bytes) -> Changes | None:
        found = in_place = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = raw.rstrip(b"\0").decode(errors="replace")
            if mask & _IN_Q_OVERFLOW or name in self._names.get(wd, ()):
                found = True
                in_place = in_place or not mask & _IN_MOVED_TO
        return Changes(in_place) if found else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def start(files: Iterable[Path]) -> Watch:
    """Watch the directories of `files` for changes to those names (and to `..data`).
    Raises WatchError when inotify cannot be used here."""
    by_dir: dict[Path, set[str]] = {}
    for f in files:
        by_dir.setdefault(f.parent, {DATA}).add(f.name)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError) as e:
        raise WatchError(errno.ENOSYS, f"no inotify on this system ({e})") from None
    init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
    add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise WatchError(code, f"inotify_init1: {os.strerror(code)}")
    names: dict[int, frozenset[str]] = {}
    for directory, wanted in by_dir.items():
        wd = add(fd, os.fsencode(directory), _MASK)
        if wd < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise WatchError(code, f"inotify_add_watch {directory}: {os.strerror(code)}")
        names[wd] = names.get(wd, frozenset()) | frozenset(wanted)
    return Watch(fd, names)
