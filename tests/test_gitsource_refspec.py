"""Ref specs and their resolution over fetched refs, and the Revision name, without a server."""

from __future__ import annotations

import pytest

from reconciler.gitsource import RefNotFoundError, RefSpecError, Revision, refspec

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)
BRANCHES = {"main": A, "1.x": B, "release": C}
TAGS = {"v1.0.0": B, "v1.2.0": C, "v2.0.0": D, "release": D, "nightly": A}


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        pytest.param("main", refspec.Name("main"), id="name"),
        pytest.param("feature/x", refspec.Name("feature/x"), id="name-with-slash"),
        pytest.param("refs/heads/release", refspec.Name("release", "branch"), id="branch"),
        pytest.param("refs/tags/release", refspec.Name("release", "tag"), id="tag"),
        pytest.param("1.x", refspec.Name("1.x"), id="maintenance-branch-is-a-name"),
        pytest.param(A, refspec.Pinned(A), id="commit"),
        pytest.param("  main\n", refspec.Name("main"), id="trimmed"),
    ],
)
def test_parse(spec: str, parsed: refspec.RefSpec) -> None:
    assert refspec.parse(spec) == parsed


@pytest.mark.parametrize("spec", [">=1.2.0 <2.0.0", "~1.2", "^1.0", "*", "=1.x", "^1 || ^2"])
def test_ranges_are_recognised(spec: str) -> None:
    assert isinstance(refspec.parse(spec), refspec.TagRange)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("a..b", "not a valid branch or tag name", id="dot-dot"),
        pytest.param("main.lock", "not a valid", id="lock"),
        pytest.param("/main", "not a valid", id="leading-slash"),
        pytest.param("ma:in", "not a valid", id="colon"),
        pytest.param("^banana", r"cannot read ref '\^banana' as a version range", id="bad-range"),
    ],
)
def test_parse_refuses(spec: str, message: str) -> None:
    with pytest.raises(RefSpecError, match=message):
        refspec.parse(spec)


@pytest.mark.parametrize(
    ("spec", "revision"),
    [
        pytest.param("main", Revision("main", A), id="branch"),
        pytest.param("1.x", Revision("1.x", B), id="branch-that-looks-like-a-range"),
        pytest.param("v1.2.0", Revision("v1.2.0", C), id="tag"),
        pytest.param("refs/heads/release", Revision("release", C), id="narrowed-branch"),
        pytest.param("refs/tags/release", Revision("release", D), id="narrowed-tag"),
        pytest.param("^1.0", Revision("v1.2.0", C), id="range-names-the-chosen-tag"),
        pytest.param(">=1.0.0 <3.0.0", Revision("v2.0.0", D), id="range-highest"),
        pytest.param(B, Revision(B, B), id="pinned"),
    ],
)
def test_resolve(spec: str, revision: Revision) -> None:
    assert refspec.resolve(refspec.parse(spec), BRANCHES, TAGS) == revision


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("nope", "no branch or tag named 'nope'", id="unknown"),
        pytest.param("refs/tags/main", "no tag named 'main'", id="not-a-tag"),
        pytest.param("release", "both a branch and a tag.*'refs/heads/release'", id="ambiguous"),
        pytest.param("^3", r"no tag matches the version range '\^3' \(3 version tags", id="range"),
        pytest.param("e" * 40, "commit e{40} is not in any branch or tag", id="pinned-missing"),
    ],
)
def test_resolve_refuses(spec: str, message: str) -> None:
    with pytest.raises(RefNotFoundError, match=message):
        refspec.resolve(refspec.parse(spec), BRANCHES, TAGS)


def test_pinned_commit_anywhere_in_history() -> None:
    e = "e" * 40
    spec = refspec.parse(e)
    assert refspec.resolve(spec, BRANCHES, TAGS, has_commit=lambda sha: sha == e) == Revision(e, e)


def test_equal_versions_choose_by_name_not_listing_order() -> None:
    tags = {"1.2.0": A, "v1.2.0": B}
    for listing in (tags, dict(reversed(tags.items()))):
        assert refspec.resolve(refspec.parse("^1"), {}, listing) == Revision("v1.2.0", B)


def test_revision_prints_and_parses() -> None:
    revision = Revision("v1.2.0", C)
    assert str(revision) == f"v1.2.0@sha1:{C}"
    assert Revision.parse(str(revision)) == revision
    assert Revision.parse(f"feature/a@b@sha1:{A}") == Revision("feature/a@b", A)
    with pytest.raises(ValueError, match="not a revision"):
        Revision.parse("main@sha256:" + "0" * 64)
