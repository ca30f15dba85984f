"""`GitSource`: the intent repository as a stream of revisions, fetched into a local cache.

    source = GitSource(url, "main", cache_dir, credentials.from_env(url))
    revision = source.fetch()           # a new Revision, or None when nothing changed
    verdict = source.verify(revision)   # with trusted keys: is it signed by one of them?
    snapshot = source.snapshot(revision)

The cache is a bare repository (no checkout, no working tree) under `cache_dir`, named by a hash
of the URL, so two sources never share one and a changed URL starts clean. It mirrors the
remote's branches (`refs/remotes/origin/*`) and tags (`refs/tags/*`, moved tags followed,
deleted ones pruned). A fetch that fails changes nothing the next `snapshot` reads: libgit2
writes refs only after the pack is complete.

With `trusted_keys`, `verify` says whether a revision is signed by one of them: the annotated
tag when the ref is a tag or a version range, else the commit (see `signatures`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import pygit2
from pygit2.enums import FetchPrune

from reconciler.gitsource import credentials, refspec, remote, signatures, urls
from reconciler.gitsource.errors import (
    AuthError,
    CacheError,
    GitSourceError,
    RefNotFoundError,
)
from reconciler.gitsource.revision import Revision
from reconciler.intent import files
from reconciler.intent.diagnostics import Diagnostic, IntentError, Position, Severity

log = logging.getLogger(__name__)

# libgit2 waits forever by default; a hung server must not hang the reconcile loop.
CONNECT_TIMEOUT_MS = 10_000
IO_TIMEOUT_MS = 60_000
# Each fetch that brings objects writes a new pack, and libgit2 keeps every pack it has read
# open, without limit by default: the soak (bench/soak.py) saw one more fd per fetch, which
# a reconciler following a busy branch would turn into EMFILE within hours. Past this many,
# libgit2 closes the least recently used.
PACK_FILE_LIMIT = 64

_BRANCHES = "refs/remotes/origin/"
_TAGS = "refs/tags/"


class GitSource:
    """One remote repository and the ref to follow in it."""

    def __init__(
        self,
        url: str,
        ref_spec: str,
        cache_dir: Path,
        auth: credentials.Credentials | None = None,
        trusted_keys: signatures.TrustedKeys | None = None,
    ) -> None:
        urls.check(url)
        self._auth: credentials.Credentials = auth or credentials.Anonymous()
        credentials.check(url, self._auth)
        self._url = url
        self.url = urls.display(url)  # safe to print
        self.spec = refspec.parse(ref_spec)
        self.cache_dir = Path(cache_dir)
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.repository_path = self.cache_dir / f"{key}.git"
        self._lock = threading.Lock()
        self._repo: pygit2.Repository | None = None
        self._last: Revision | None = None
        self.trusted_keys = trusted_keys
        _default_timeouts()

    def __repr__(self) -> str:
        return (
            f"GitSource({self.url!r}, {str(self.spec)!r}, {str(self.cache_dir)!r}, "
            f"auth={type(self._auth).__name__})"
        )

    @property
    def revision(self) -> Revision | None:
        """The revision the last successful fetch resolved (None before the first)."""
        return self._last

    def fetch(self) -> Revision | None:
        """Fetch and resolve the ref; None when it resolves to the revision it did last time.

        Raises `FetchError` (and its `AuthError`, `HostVerificationError`) when the remote
        cannot be read, `RefNotFoundError` when nothing matches the ref: in both cases `revision`
        keeps the last good one and the cache stays usable. A pinned commit already in the
        cache is not fetched again: it cannot change.
        """
        with self._lock:
            repo = self._open()
            spec = self.spec
            if not (isinstance(spec, refspec.Pinned) and _has_commit(repo, spec.commit)):
                self._download(repo)
            branches, tags = _refs(repo)
            revision = refspec.resolve(
                spec, branches, tags, has_commit=lambda sha: _has_commit(repo, sha)
            )
            if revision == self._last:
                log.debug("%s: %s unchanged", self.url, revision)
                return None
            log.info("%s: %s is at %s", self.url, self.spec, revision)
            self._last = revision
            return revision

    def verify(self, revision: Revision) -> signatures.Verdict | None:
        """Whether `revision` is signed by a trusted key; None when no keys are configured
        (signatures not required). In tag mode (a tag name, or a version range) the annotated
        tag must be signed; otherwise the commit."""
        if self.trusted_keys is None:
            return None
        with self._lock:
            repo = self._open()
            branches, tags = _refs(repo)
            spec = self.spec
            tag_mode = isinstance(spec, refspec.TagRange) or (
                isinstance(spec, refspec.Name)
                and spec.kind != "branch"
                and revision.ref in tags
                and (spec.kind == "tag" or revision.ref not in branches)
            )
            if tag_mode:
                verdict = signatures.verify_tag(
                    repo, revision.ref, revision.commit, self.trusted_keys
                )
            else:
                verdict = signatures.verify_commit(repo, revision.commit, self.trusted_keys)
        log_ = log.info if verdict.trusted else log.warning
        log_("%s: %s", self.url, verdict)
        return verdict

    def snapshot(self, revision: Revision, folder: str = "") -> files.Snapshot:
        """The intent files of `revision` (of `folder` inside it), read from the cache.

        A missing folder is an `IntentError`: the revision is wrong, not the source.
        """
        with self._lock:
            repo = self._open()
            if not _has_commit(repo, revision.commit):
                raise RefNotFoundError(
                    f"commit {revision.commit} is not in the cache of {self.url}"
                )
            tree = repo[revision.commit].peel(pygit2.Commit).tree
            folder = folder.strip("/")
            if folder:
                try:
                    tree = tree[folder].peel(pygit2.Tree)
                except (KeyError, ValueError, pygit2.GitError):
                    where = Position(folder)
                    message = f"{folder!r} is not a folder at {revision}"
                    raise IntentError([Diagnostic(where, Severity.ERROR, message)]) from None
            return files.from_tree(repo, tree, str(revision))

    def close(self) -> None:
        with self._lock:
            if self._repo is not None:
                self._repo.free()
                self._repo = None

    def __enter__(self) -> GitSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> pygit2.Repository:
        if self._repo is not None:
            return self._repo
        try:
            return self._open_or_clone()
        except (OSError, pygit2.GitError) as e:
            raise CacheError(
                f"cannot use the cache {self.repository_path} for {self.url}: {e}"
            ) from None

    def _open_or_clone(self) -> pygit2.Repository:
        path = self.repository_path
        if (path / "HEAD").exists():
            try:
                repo = pygit2.Repository(str(path))
                if _usable(repo, self._url):
                    self._repo = repo
                    return repo
                repo.free()
            except (pygit2.GitError, KeyError, ValueError):
                pass
            log.warning("%s: cache %s is unusable, cloning again", self.url, path)
            shutil.rmtree(path)
        # Built aside and renamed into place, so a crash never leaves a half-made cache.
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f"{path.name}.{os.getpid()}.new")
        shutil.rmtree(staging, ignore_errors=True)
        repo = pygit2.init_repository(str(staging), bare=True)
        repo.remotes.create("origin", self._url, f"+refs/heads/*:{_BRANCHES}*")
        repo.remotes.add_fetch("origin", f"+{_TAGS}*:{_TAGS}*")
        # Only the refspec above fetches tags: libgit2's automatic tag following would leave
        # a force-moved tag where it was.
        repo.config["remote.origin.tagopt"] = "--no-tags"
        repo.free()
        staging.rename(path)
        self._repo = pygit2.Repository(str(path))
        return self._repo

    def _download(self, repo: pygit2.Repository) -> None:
        if urls.scheme(self._url) == "ssh" and not isinstance(self._auth, credentials.SshKey):
            raise AuthError(self.url, "an SSH remote needs an SSH key (WEFT_GIT_SSH_KEY_FILE)")
        callbacks = remote.Callbacks(self._url, self._auth)
        try:
            with remote.known_hosts_home(self._auth, self.cache_dir):
                repo.remotes["origin"].fetch(
                    callbacks=callbacks, prune=FetchPrune.PRUNE, message="weft: fetch"
                )
        except OSError as e:  # the private known_hosts copy could not be written
            raise CacheError(f"cannot write under {self.cache_dir}: {e}") from None
        except (pygit2.GitError, GitSourceError) as e:
            error = remote.translate(e, self._url, self._auth, callbacks)
            log.debug("%s", error)  # the caller reports it, with its backoff
            raise error from None


def _refs(repo: pygit2.Repository) -> tuple[dict[str, str], dict[str, str]]:
    """Branch and tag names mapped to the commits they point at (annotated tags peeled)."""
    branches: dict[str, str] = {}
    tags: dict[str, str] = {}
    for name in repo.references:
        if name.startswith(_BRANCHES):
            into, short = branches, name[len(_BRANCHES) :]
        elif name.startswith(_TAGS):
            into, short = tags, name[len(_TAGS) :]
        else:
            continue
        try:
            into[short] = str(repo.references[name].peel(pygit2.Commit).id)
        except (ValueError, pygit2.GitError):
            continue  # a tag of a tree or a blob names no revision
    branches.pop("HEAD", None)
    return branches, tags


def _usable(repo: pygit2.Repository, url: str) -> bool:
    """A cache this code made for this URL, whose refs can be read."""
    repo.lookup_reference("HEAD")  # raises on a corrupt ref store
    return (
        repo.is_bare
        and repo.remotes["origin"].url == url
        and repo.config["remote.origin.tagopt"] == "--no-tags"
    )


def _has_commit(repo: pygit2.Repository, sha: str) -> bool:
    obj = repo.get(sha)
    return obj is not None and obj.type == pygit2.enums.ObjectType.COMMIT


def _default_timeouts() -> None:
    if pygit2.settings.mwindow_file_limit == 0:
        pygit2.settings.mwindow_file_limit = PACK_FILE_LIMIT
    if pygit2.settings.server_connect_timeout == 0:
        pygit2.settings.server_connect_timeout = CONNECT_TIMEOUT_MS
    if pygit2.settings.server_timeout == 0:
        pygit2.settings.server_timeout = IO_TIMEOUT_MS
