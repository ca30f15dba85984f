"""GitSource against real git servers on loopback: `git daemon` and `git http-backend`.

Branches, tags, semver ranges and pinned commits; unchanged revisions; broken and unreachable
remotes leaving the last good revision and a usable cache.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pygit2
import pytest

from reconciler import gitsource, intent
from reconciler.gitsource import FetchError, GitSource, RefNotFoundError, Revision
from tests.conftest import TEMPLATE
from tests.gitservers import GitDaemon, HttpGitServer, Upstream, free_port

_names = itertools.count()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gitsource-fetch") / "served"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def daemon(served: Path) -> Iterator[GitDaemon]:
    with GitDaemon(served) as d:
        yield d


@pytest.fixture(scope="module")
def http(served: Path) -> Iterator[HttpGitServer]:
    with HttpGitServer(served) as server:
        yield server


@pytest.fixture
def upstream(served: Path) -> Upstream:
    return Upstream(served, f"mesh-{next(_names)}.git")


@pytest.fixture(params=["git-daemon", "http-backend"])
def url_of(
    request: pytest.FixtureRequest, daemon: GitDaemon, http: HttpGitServer
) -> Callable[[Upstream], str]:
    return daemon.url if request.param == "git-daemon" else http.url


@pytest.fixture
def sources(tmp_path: Path) -> Iterator[Callable[[str, str], GitSource]]:
    """Make GitSources with a per-test cache; all are closed afterwards."""
    made: list[GitSource] = []

    def make(url: str, ref: str) -> GitSource:
        made.append(GitSource(url, ref, tmp_path / "cache"))
        return made[-1]

    yield make
    for source in made:
        source.close()


def paths(snapshot: intent.files.Snapshot) -> dict[str, bytes]:
    return {f.path: f.data for f in snapshot.files}


def test_follows_a_branch_across_commits(
    url_of: Callable[[Upstream], str],
    upstream: Upstream,
    sources: Callable[[str, str], GitSource],
) -> None:
    first = upstream.commit({"mesh.yaml": "one: 1\n"}, "first")
    source = sources(url_of(upstream), "main")
    r1 = source.fetch()
    assert r1 == Revision("main", first)
    assert str(r1) == f"main@sha1:{first}"
    assert source.fetch() is None  # nothing new: the loop skips all work
    assert source.revision == r1

    second = upstream.commit({"mesh.yaml": "two: 2\n", "more/b.yml": "b: 1\n"}, "second")
    r2 = source.fetch()
    assert r2 == Revision("main", second)
    assert source.fetch() is None

    snapshot = source.snapshot(r2)
    assert snapshot.revision == f"main@sha1:{second}"
    assert paths(snapshot) == {"mesh.yaml": b"two: 2\n", "more/b.yml": b"b: 1\n"}
    assert r1 is not None
    assert paths(source.snapshot(r1)) == {"mesh.yaml": b"one: 1\n"}  # older commits stay readable


def test_the_cache_is_bare_and_reused_across_restarts(
    daemon: GitDaemon, upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"mesh.yaml": "a: 1\n"})
    with GitSource(daemon.url(upstream), "main", tmp_path / "cache") as source:
        assert source.fetch() == Revision("main", sha)
        cache = source.repository_path
    repo = pygit2.Repository(str(cache))
    assert repo.is_bare
    assert not (cache / "mesh.yaml").exists()
    repo.free()
    # a restarted reconciler finds its cache and reports the revision once more
    with GitSource(daemon.url(upstream), "main", tmp_path / "cache") as again:
        assert again.repository_path == cache
        assert again.fetch() == Revision("main", sha)
        assert again.fetch() is None


def test_template_intent_loads_from_a_fetched_revision(
    url_of: Callable[[Upstream], str],
    upstream: Upstream,
    sources: Callable[[str, str], GitSource],
) -> None:
    shutil.copytree(TEMPLATE, upstream.work, dirs_exist_ok=True)
    sha = upstream.commit({}, "the template")
    source = sources(url_of(upstream), "main")
    revision = source.fetch()
    assert revision is not None
    mesh = intent.load(source.snapshot(revision))
    assert mesh.revision == f"main@sha1:{sha}"
    assert len(mesh.services) == 6


def test_tags_lightweight_annotated_and_moved(
    url_of: Callable[[Upstream], str],
    upstream: Upstream,
    sources: Callable[[str, str], GitSource],
) -> None:
    c1 = upstream.commit({"mesh.yaml": "v: 1\n"})
    upstream.tag("v1.0.0")
    upstream.tag("v1.1.0", annotated=True)
    c2 = upstream.commit({"mesh.yaml": "v: 2\n"})
    light = sources(url_of(upstream), "v1.0.0")
    annotated = sources(url_of(upstream), "refs/tags/v1.1.0")
    assert light.fetch() == Revision("v1.0.0", c1)
    assert annotated.fetch() == Revision("v1.1.0", c1)  # peeled to the commit
    assert light.fetch() is None  # new commits on main do not move a tag

    upstream.tag("v1.1.0", annotated=True, at=c2)  # a force-pushed tag is followed
    assert annotated.fetch() == Revision("v1.1.0", c2)
    assert paths(annotated.snapshot(Revision("v1.1.0", c2))) == {"mesh.yaml": b"v: 2\n"}


def test_semver_range_follows_the_highest_matching_tag(
    url_of: Callable[[Upstream], str],
    upstream: Upstream,
    sources: Callable[[str, str], GitSource],
) -> None:
    shas = {}
    for version in ("v1.0.0", "v1.2.0", "v2.0.0"):
        shas[version] = upstream.commit({"mesh.yaml": f"version: {version}\n"}, version)
        upstream.tag(version)
    source = sources(url_of(upstream), ">=1.2.0 <2.0.0")
    assert source.fetch() == Revision("v1.2.0", shas["v1.2.0"])

    shas["v1.3.0"] = upstream.commit({"mesh.yaml": "version: v1.3.0\n"})
    assert source.fetch() is None  # a commit is not a release
    upstream.tag("v1.3.0", annotated=True)
    revision = source.fetch()
    assert revision == Revision("v1.3.0", shas["v1.3.0"])
    assert source.snapshot(revision).revision == f"v1.3.0@sha1:{shas['v1.3.0']}"

    for outside in ("v2.1.0", "v1.4.0-rc.1", "release-1.9.0"):
        upstream.commit({"mesh.yaml": f"version: {outside}\n"})
        upstream.tag(outside)
    assert source.fetch() is None

    tilde = sources(url_of(upstream), "~1.2")
    assert tilde.fetch() == Revision("v1.2.0", shas["v1.2.0"])
    caret = sources(url_of(upstream), "^1.0")
    assert caret.fetch() == Revision("v1.3.0", shas["v1.3.0"])


def test_pinned_commit_is_not_fetched_again(
    http: HttpGitServer, upstream: Upstream, sources: Callable[[str, str], GitSource]
) -> None:
    c1 = upstream.commit({"mesh.yaml": "pinned: yes\n"})
    upstream.commit({"mesh.yaml": "pinned: no\n"})  # c1 is no branch's tip
    source = sources(http.url(upstream), c1)
    revision = source.fetch()
    assert revision == Revision(c1, c1)
    assert paths(source.snapshot(revision)) == {"mesh.yaml": b"pinned: yes\n"}

    upstream.commit({"mesh.yaml": "pinned: still no\n"})
    asked = len(http.requests)
    http.failing = 503  # even a broken server does not matter: the commit cannot change
    try:
        assert source.fetch() is None
    finally:
        http.failing = 0
    assert len(http.requests) == asked


def test_pinned_commit_missing_from_the_remote(
    daemon: GitDaemon, upstream: Upstream, sources: Callable[[str, str], GitSource]
) -> None:
    upstream.commit({"mesh.yaml": "a: 1\n"})
    source = sources(daemon.url(upstream), "0" * 40)
    with pytest.raises(RefNotFoundError, match=r"commit 0{40} is not in any branch or tag"):
        source.fetch()


def test_deleted_branch_keeps_the_last_good_revision(
    url_of: Callable[[Upstream], str],
    upstream: Upstream,
    sources: Callable[[str, str], GitSource],
) -> None:
    upstream.commit({"mesh.yaml": "a: 1\n"})
    upstream.branch("canary")
    sha = upstream.commit({"mesh.yaml": "canary: 1\n"})
    source = sources(url_of(upstream), "canary")
    good = source.fetch()
    assert good == Revision("canary", sha)
    upstream.delete_ref("refs/heads/canary")
    with pytest.raises(RefNotFoundError, match="no branch or tag named 'canary'"):
        source.fetch()
    assert source.revision == good
    assert paths(source.snapshot(good)) == {"mesh.yaml": b"canary: 1\n"}


def test_a_name_that_is_both_branch_and_tag_is_refused(
    daemon: GitDaemon, upstream: Upstream, sources: Callable[[str, str], GitSource]
) -> None:
    sha = upstream.commit({"mesh.yaml": "a: 1\n"})
    upstream.tag("main")
    with pytest.raises(RefNotFoundError, match="both a branch and a tag"):
        sources(daemon.url(upstream), "main").fetch()
    assert sources(daemon.url(upstream), "refs/heads/main").fetch() == Revision("main", sha)


def test_broken_remote_raises_and_leaves_the_cache_usable(
    http: HttpGitServer, upstream: Upstream, sources: Callable[[str, str], GitSource]
) -> None:
    c1 = upstream.commit({"mesh.yaml": "a: 1\n"})
    source = sources(http.url(upstream), "main")
    good = source.fetch()
    c2 = upstream.commit({"mesh.yaml": "a: 2\n"})
    http.failing = 500
    try:
        with pytest.raises(FetchError) as caught:
            source.fetch()
    finally:
        http.failing = 0
    assert type(caught.value) is FetchError
    assert str(caught.value).startswith(f"cannot fetch {http.url(upstream)}: ")
    assert "500" in str(caught.value)
    assert caught.value.url == http.url(upstream)
    assert source.revision == good == Revision("main", c1)
    assert paths(source.snapshot(good)) == {"mesh.yaml": b"a: 1\n"}
    assert source.fetch() == Revision("main", c2)  # the server is back


def test_unreachable_remote_then_back(upstream: Upstream, tmp_path: Path) -> None:
    c1 = upstream.commit({"mesh.yaml": "a: 1\n"})
    daemon = GitDaemon(upstream.bare.parent)
    url = daemon.url(upstream)
    with GitSource(url, "main", tmp_path / "cache") as source:
        try:
            good = source.fetch()
        finally:
            daemon.close()
        assert good == Revision("main", c1)
        c2 = upstream.commit({"mesh.yaml": "a: 2\n"})
        with pytest.raises(FetchError, match=f"^cannot fetch {url}: .*"):
            source.fetch()
        assert source.revision == good
        assert paths(source.snapshot(good)) == {"mesh.yaml": b"a: 1\n"}
        with GitDaemon(upstream.bare.parent, port=daemon.port):
            assert source.fetch() == Revision("main", c2)


def test_nothing_listening_on_the_first_fetch(tmp_path: Path) -> None:
    url = f"git://127.0.0.1:{free_port()}/mesh.git"
    with GitSource(url, "main", tmp_path / "cache") as source:
        with pytest.raises(FetchError, match=f"cannot fetch {url}: .*(refused|connect)"):
            source.fetch()
        assert source.revision is None


@pytest.mark.parametrize("transport", ["git-daemon", "http-backend"])
def test_repository_that_does_not_exist(
    transport: str, daemon: GitDaemon, http: HttpGitServer, served: Path, tmp_path: Path
) -> None:
    url = (daemon.url if transport == "git-daemon" else http.url)("no-such-repository.git")
    with GitSource(url, "main", tmp_path / "cache") as source, pytest.raises(FetchError):
        source.fetch()


def test_a_corrupt_cache_is_cloned_again(
    daemon: GitDaemon, upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"mesh.yaml": "a: 1\n"})
    with GitSource(daemon.url(upstream), "main", tmp_path / "cache") as source:
        source.fetch()
        cache = source.repository_path
    (cache / "HEAD").write_text("garbage\n")
    with GitSource(daemon.url(upstream), "main", tmp_path / "cache") as source:
        assert source.fetch() == Revision("main", sha)


def test_snapshot_of_a_folder(
    daemon: GitDaemon, upstream: Upstream, sources: Callable[[str, str], GitSource]
) -> None:
    upstream.commit(
        {"mesh/a.yaml": "a: 1\n", "mesh/.github/ci.yaml": "on: push\n", "other/b.yaml": "b: 1\n"}
    )
    source = sources(daemon.url(upstream), "main")
    revision = source.fetch()
    assert revision is not None
    assert paths(source.snapshot(revision, "mesh/")) == {"a.yaml": b"a: 1\n"}
    with pytest.raises(intent.IntentError, match="'nope' is not a folder at main@sha1:"):
        source.snapshot(revision, "nope")
    with pytest.raises(RefNotFoundError, match="not in the cache"):
        source.snapshot(Revision("main", "f" * 40))


def test_source_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(gitsource.RefSpecError):
        GitSource("git://127.0.0.1/x.git", "a..b", tmp_path)
    with pytest.raises(gitsource.UrlError):
        GitSource("gopher://127.0.0.1/x.git", "main", tmp_path)


def test_an_unusable_cache_directory_is_a_typed_error(daemon: GitDaemon, tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    source = GitSource(daemon.url("any.git"), "main", tmp_path / "not-a-directory")
    with source, pytest.raises(gitsource.CacheError, match="cannot use the cache"):
        source.fetch()
