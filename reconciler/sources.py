"""Revision sources for the reconcile loop: a remote git repository (GitSource), or a local one.

`weft run --repo` takes either: a path to a repository on this machine, or a URL (git://,
http(s)://, ssh://, user@host:path) fetched into a cache under the state directory.
"""

from __future__ import annotations

from pathlib import Path

from reconciler import gitsource, localrepo
from reconciler.intent.files import Snapshot
from reconciler.loop import Source


class RemoteSource:
    """A `GitSource` as the loop sees sources: revisions as their printed names."""

    def __init__(self, source: gitsource.GitSource) -> None:
        self.git = source

    def fetch(self) -> str | None:
        revision = self.git.fetch()
        return None if revision is None else str(revision)

    def verify(self, revision: str) -> gitsource.signatures.Verdict | None:
        return self.git.verify(gitsource.Revision.parse(revision))

    def snapshot(self, revision: str) -> Snapshot:
        return self.git.snapshot(gitsource.Revision.parse(revision))

    def __repr__(self) -> str:
        return f"RemoteSource({self.git.url!r})"  # never the credentials


def open_source(
    repo: str, ref: str, cache: Path, trusted_keys: gitsource.signatures.TrustedKeys | None = None
) -> Source:
    path = Path(repo)
    if path.is_dir():
        return localrepo.LocalRepoSource(path, ref, trusted_keys)
    auth = gitsource.credentials.from_env(repo)
    return RemoteSource(gitsource.GitSource(repo, ref, cache, auth, trusted_keys))
