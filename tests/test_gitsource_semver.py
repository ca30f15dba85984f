"""Semver tags and npm-style ranges: which tag a range follows."""

from __future__ import annotations

import pytest

from reconciler.gitsource import semver

V = semver.Version.parse


def test_tag_names_that_are_versions() -> None:
    assert V("v1.2.3") == semver.Version(1, 2, 3)
    assert V("1.2.3-rc.1+build.7") == semver.Version(1, 2, 3, ("rc", 1), "build.7")
    for name in ("main", "1.2", "v1.2.3.4", "01.2.3", "1.2.3-", "release-1.2.3", "V1.2.3"):
        assert V(name) is None, name


def test_precedence_follows_semver() -> None:
    # the ordering example of SemVer 2.0.0, section 11
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
        "10.0.0",
    ]
    versions = [V(t) for t in ordered]
    assert all(versions)
    keys = [v.precedence for v in versions if v]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    a, b = V("1.0.0+a"), V("1.0.0+b")
    assert a is not None
    assert b is not None
    assert a.precedence == b.precedence  # build metadata does not order


TAGS = [
    "v0.0.3",
    "v0.2.3",
    "v0.2.9",
    "v1.0.0",
    "v1.2.0",
    "v1.2.5",
    "v1.3.0-rc.1",
    "v1.3.0",
    "v1.9.9",
    "v2.0.0-rc.1",
    "v2.0.0",
    "v2.1.0",
    "v3.0.0-beta.1",
]


@pytest.mark.parametrize(
    ("spec", "highest"),
    [
        pytest.param(">=1.2.0 <2.0.0", "v1.9.9", id="comparators"),
        pytest.param(">= 1.2.0 < 2.0.0", "v1.9.9", id="spaces-after-operators"),
        pytest.param("~1.2", "v1.2.5", id="tilde-minor"),
        pytest.param("~1.2.0", "v1.2.5", id="tilde-patch"),
        pytest.param("~1", "v1.9.9", id="tilde-major"),
        pytest.param("^1.0", "v1.9.9", id="caret"),
        pytest.param("^1.2.3", "v1.9.9", id="caret-full"),
        pytest.param("^0.2.3", "v0.2.9", id="caret-zero-major"),
        pytest.param("^0.0.3", "v0.0.3", id="caret-zero-minor"),
        pytest.param("^2", "v2.1.0", id="caret-major-only"),
        pytest.param("*", "v2.1.0", id="any-release"),
        pytest.param("", "v2.1.0", id="empty-is-any"),
        pytest.param("=1.x", "v1.9.9", id="x-range"),
        pytest.param("=1.2.*", "v1.2.5", id="star-range"),
        pytest.param("1.2.0 - 1.3", "v1.3.0", id="hyphen-partial-upper"),
        pytest.param("1.2.0 - 1.2.5", "v1.2.5", id="hyphen-inclusive"),
        pytest.param("<1.2", "v1.0.0", id="less-than-partial"),
        pytest.param("<=1.2", "v1.2.5", id="at-most-partial"),
        pytest.param(">1.9.9 <3", "v2.1.0", id="greater-than"),
        pytest.param(">2.1", None, id="greater-than-partial-excludes-all-of-it"),
        pytest.param("=1.2.0", "v1.2.0", id="exact"),
        pytest.param("^1.0 || ^2.0", "v2.1.0", id="or"),
        pytest.param("<1.0.0 || =1.2.0", "v1.2.0", id="or-picks-highest-of-both"),
        pytest.param("^4", None, id="nothing-matches"),
        # pre-releases only when the range names one of the same version
        pytest.param(">=1.3.0-rc.1 <1.3.0", "v1.3.0-rc.1", id="prerelease-asked-for"),
        pytest.param(">=2.0.0-rc.0 <2.0.0", "v2.0.0-rc.1", id="prerelease-lower-bound"),
        pytest.param("^3.0.0-alpha", "v3.0.0-beta.1", id="prerelease-caret"),
        pytest.param("^2.1", "v2.1.0", id="no-prerelease-of-other-versions"),
        pytest.param(">=3.0.0-0", "v3.0.0-beta.1", id="prerelease-of-the-named-version"),
        pytest.param(">=2.9.0-0", None, id="no-prerelease-of-another-version"),
    ],
)
def test_range_picks_highest(spec: str, highest: str | None) -> None:
    r = semver.parse_range(spec)
    versions = {str(V(t)): t for t in TAGS}
    chosen = r.highest(v for t in TAGS if (v := V(t)))
    assert (versions[str(chosen)] if chosen else None) == highest


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(">=", id="operator-alone"),
        pytest.param(">=1.2.0 <", id="trailing-operator"),
        pytest.param("^banana", id="not-a-version"),
        pytest.param("~1.2.3.4", id="four-parts"),
        pytest.param("1.0.0 - ", id="half-hyphen"),
    ],
)
def test_ranges_that_cannot_be_read(spec: str) -> None:
    with pytest.raises(semver.RangeError):
        semver.parse_range(spec)


def test_prerelease_of_another_version_is_never_picked() -> None:
    r = semver.parse_range("^1.0")
    assert not r.matches(semver.Version(1, 5, 0, ("rc", 1)))
    assert not r.matches(semver.Version(2, 0, 0, ("rc", 1)))
    assert r.matches(semver.Version(1, 5, 0))
