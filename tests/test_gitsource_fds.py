"""A GitSource following a busy branch keeps a bounded number of files open, against a real
`git daemon`. Each fetch writes a pack and libgit2 kept every pack open; the soak found the
reconciler's fds growing by one per fetch (bench/soak.py)."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.gitsource import GitSource, source
from tests.gitservers import GitDaemon, Upstream


def open_packs() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += ".pack" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while listing
    return count


def test_open_pack_files_stay_bounded_however_many_fetches(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with GitDaemon(served) as daemon:
        upstream = Upstream(served, "busy.git")
        upstream.commit({"mesh.yaml": "n: 0\n"})
        with GitSource(daemon.url(upstream), "main", tmp_path / "cache") as s:
            s.fetch()
            before = open_packs()
            fetches = source.PACK_FILE_LIMIT + 16
            for n in range(1, fetches + 1):
                upstream.commit({"mesh.yaml": f"n: {n}\n"})
                assert s.fetch() is not None
            packs = len(list((s.repository_path / "objects" / "pack").glob("*.pack")))
            assert packs > source.PACK_FILE_LIMIT  # one pack per fetch: the limit is reached
            assert open_packs() - before <= source.PACK_FILE_LIMIT
