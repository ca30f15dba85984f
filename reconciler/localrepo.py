"""A git repository on this machine as a revision source (what `weft up` edits and commits to).

Reads commits with pygit2, never the working tree: an uncommitted edit is not intent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2

from reconciler.intent import files
from reconciler.intent.files import Snapshot


class LocalRepoSource:
    def __init__(self, path: Path, ref: str = "main") -> None:
        self.path, self.ref = path, ref
        self.last: str | None = None

    def fetch(self) -> str | None:
        repo = pygit2.Repository(str(self.path))
        commit = repo.revparse_single(self.ref).peel(pygit2.Commit)
        revision = f"{self.ref}@sha1:{commit.id}"
        if revision == self.last:
            return None
        self.last = revision
        return revision

    def snapshot(self, revision: str) -> Snapshot:
        sha = revision.rpartition("@sha1:")[2]
        snap = files.from_git(self.path, sha)
        return Snapshot(revision, snap.files, snap.refused)


def init_from_template(template: Path, repo: Path) -> None:
    """A new git repository at `repo` holding the template, committed on `main`."""
    shutil.copytree(template, repo)
    r = pygit2.init_repository(str(repo), initial_head="main")
    r.index.add_all()
    r.index.write()
    sig = pygit2.Signature("weft", "weft@localhost")
    r.create_commit(
        "HEAD", sig, sig, "mesh: start from mesh-repo-template", r.index.write_tree(), []
    )
