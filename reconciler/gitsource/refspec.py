"""What to follow in the intent repository, and which commit that is among the fetched refs.

A ref spec is one of:

- a branch or a tag by name (`main`, `v1.2.0`); `refs/heads/<name>` or `refs/tags/<name>` when
  a branch and a tag share the name (a bare ambiguous name is refused, not guessed);
- a semver range over tags (`>=1.2.0 <2.0.0`, `~1.2`, `^1.0`, `*`): the highest matching tag;
  any spec containing one of `< > = ~ ^ * |` or a space is a range (none of them can appear in
  a usable branch name). A bare `1.x` is a name, as maintenance branches are often called;
  write `=1.x` for the range;
- a pinned commit: 40 hexadecimal digits.

Resolution is a pure function over the refs a fetch left in the cache, so it is tested
without a server.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

from reconciler.gitsource import semver
from reconciler.gitsource.errors import RefNotFoundError, RefSpecError
from reconciler.gitsource.revision import Revision

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_RANGE_CHARS = frozenset("<>=~^*| ")
# git check-ref-format's rules, enough to refuse what no ref can be called.
_BAD_NAME = re.compile(r"(^[/.]|[/.]$|\.\.|@\{|//|/\.|\.lock$|\.lock/|[\x00-\x20\x7f~^:?*\[\\])")


@dataclasses.dataclass(frozen=True, slots=True)
class Name:
    """A branch or a tag; `kind` narrows it when the spec said `refs/heads/` or `refs/tags/`."""

    name: str
    kind: str = ""  # "", "branch" or "tag"

    def __str__(self) -> str:
        return {"branch": "refs/heads/", "tag": "refs/tags/"}.get(self.kind, "") + self.name


@dataclasses.dataclass(frozen=True, slots=True)
class TagRange:
    range: semver.Range

    def __str__(self) -> str:
        return str(self.range)


@dataclasses.dataclass(frozen=True, slots=True)
class Pinned:
    commit: str

    def __str__(self) -> str:
        return self.commit


RefSpec = Name | TagRange | Pinned


def parse(text: str) -> RefSpec:
    """Read a ref spec; raises RefSpecError for what can never resolve."""
    spec = text.strip()
    if not spec:
        raise RefSpecError("the ref to follow is empty: name a branch, a tag, a range or a commit")
    if _SHA1.match(spec):
        return Pinned(spec)
    if _RANGE_CHARS & set(spec):
        try:
            return TagRange(semver.parse_range(spec))
        except semver.RangeError as e:
            raise RefSpecError(f"cannot read ref {spec!r} as a version range: {e}") from None
    kind = ""
    for prefix, narrowed in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if spec.startswith(prefix):
            spec, kind = spec[len(prefix) :], narrowed
    if _BAD_NAME.search(spec):
        raise RefSpecError(f"{text.strip()!r} is not a valid branch or tag name")
    return Name(spec, kind)


def resolve(
    spec: RefSpec,
    branches: Mapping[str, str],
    tags: Mapping[str, str],
    has_commit: Callable[[str], bool] | None = None,
) -> Revision:
    """The revision `spec` names, given branch and tag names mapped to the commits they point at.

    `has_commit` says whether a pinned commit was fetched; without it, a pinned commit must be
    the tip of some branch or tag.
    """
    if isinstance(spec, Pinned):
        if has_commit is not None:
            present = has_commit(spec.commit)
        else:
            present = spec.commit in branches.values() or spec.commit in tags.values()
        if not present:
            raise RefNotFoundError(
                f"commit {spec.commit} is not in any branch or tag of the remote"
            )
        return Revision(spec.commit, spec.commit)
    if isinstance(spec, TagRange):
        versions: dict[str, semver.Version] = {}
        for tag in tags:
            v = semver.Version.parse(tag)
            if v is not None:
                versions[tag] = v
        # Highest precedence first; equal versions (`v1.2.0` and `1.2.0`) by name, so the choice
        # never depends on the order refs were listed in.
        matching = sorted(
            (t for t, v in versions.items() if spec.range.matches(v)),
            key=lambda t: (versions[t].precedence, t),
        )
        if not matching:
            raise RefNotFoundError(
                f"no tag matches the version range {str(spec.range)!r} "
                f"({len(versions)} version tags on the remote)"
            )
        return Revision(matching[-1], tags[matching[-1]])
    found: list[tuple[str, str]] = []
    if spec.kind in ("", "branch") and spec.name in branches:
        found.append(("branch", branches[spec.name]))
    if spec.kind in ("", "tag") and spec.name in tags:
        found.append(("tag", tags[spec.name]))
    if len(found) > 1:
        raise RefNotFoundError(
            f"{spec.name!r} is both a branch and a tag on the remote; "
            f"follow 'refs/heads/{spec.name}' or 'refs/tags/{spec.name}'"
        )
    if not found:
        what = {"branch": "branch", "tag": "tag"}.get(spec.kind, "branch or tag")
        raise RefNotFoundError(f"no {what} named {spec.name!r} on the remote")
    return Revision(spec.name, found[0][1])
