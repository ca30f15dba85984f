"""A git repository on this machine as a revision source (what `weft up` edits and commits to).

Reads commits with pygit2, never the working tree: an uncommitted edit is not intent. With
trusted keys, a revision must be signed as for a remote (`gitsource.signatures`): the annotated
tag when the ref is a tag, else the commit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2

from reconciler.gitsource import signatures
from reconciler.intent import files
from reconciler.intent.files import Snapshot


class LocalRepoSource:
    def __init__(
        self, path: Path, ref: str = "main", trusted_keys: signatures.TrustedKeys | None = None
    ) -> None:
        self.path, self.ref = path, ref
        self.trusted_keys = trusted_keys
        self.last: str | None = None

    def fetch(self) -> str | None:
        repo = pygit2.Repository(str(self.path))
        commit = repo.revparse_single(self.ref).peel(pygit2.Commit)
        revision = f"{self.ref}@sha1:{commit.id}"
        if revision == self.last:
            return None
        self.last = revision
        return revision

    def verify(self, revision: str) -> signatures.Verdict | None:
        if self.trusted_keys is None:
            return None
        ref, _, sha = revision.rpartition("@sha1:")
        repo = pygit2.Repository(str(self.path))
        try:
            if f"refs/tags/{ref}" in repo.references and f"refs/heads/{ref}" not in repo.references:
                return signatures.verify_tag(repo, ref, sha, self.trusted_keys)
            return signatures.verify_commit(repo, sha, self.trusted_keys)
        finally:
            repo.free()

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
