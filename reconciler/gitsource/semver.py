"""Semantic versions and version ranges, for following the highest release tag in a range.

Versions are SemVer 2.0.0 (`1.2.3`, `1.2.3-rc.1`, `1.2.3+build`), optionally written with a
leading `v` as tags usually are. Ranges use the npm syntax platform teams already know:
comparators (`>=1.2.0 <2.0.0`), `~1.2` (patch updates), `^1.0` (no major change), x-ranges
(`1.2.x`, `*`), hyphen ranges (`1.2.0 - 1.4`) and `||`. As in npm, a pre-release matches only
a range that names a pre-release of the same `major.minor.patch`, so `^1.0` never picks
`2.0.0-rc.1` nor `1.5.0-rc.1`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

_NUM = r"0|[1-9]\d*"
_PRE_ID = r"0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*"
_VERSION = re.compile(
    rf"^v?(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>(?:{_PRE_ID})(?:\.(?:{_PRE_ID}))*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
# A partial version in a range: missing or wildcard (x, X, *) parts widen it.
_XR = r"x|X|\*|0|[1-9]\d*"
_PARTIAL = re.compile(
    rf"^v?(?P<major>{_XR})(?:\.(?P<minor>{_XR})(?:\.(?P<patch>{_XR})"
    rf"(?:-(?P<pre>(?:{_PRE_ID})(?:\.(?:{_PRE_ID}))*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?$"
)
_OPERATORS = ("<=", ">=", "<", ">", "=", "~", "^")

PreRelease = tuple[int | str, ...]


class RangeError(ValueError):
    """A version range that cannot be parsed; the message names the offending part."""


@dataclasses.dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: PreRelease = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """The version a tag name spells (`v1.2.3` or `1.2.3`), or None for any other name."""
        m = _VERSION.match(text)
        if m is None:
            return None
        return cls(
            int(m["major"]),
            int(m["minor"]),
            int(m["patch"]),
            _prerelease(m["pre"]),
            m["build"] or "",
        )

    @property
    def precedence(self) -> tuple[int, int, int, tuple[int, tuple[tuple[int, int, str], ...]]]:
        """A sort key in SemVer precedence: build metadata is ignored, pre-releases sort first."""
        if not self.prerelease:
            return (self.major, self.minor, self.patch, (1, ()))
        ids = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, (0, ids))

    @property
    def core(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(p) for p in self.prerelease)
        return text + (f"+{self.build}" if self.build else "")


def _prerelease(text: str | None) -> PreRelease:
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


# The lowest pre-release of a version: `<2.0.0-0` excludes every 2.0.0 pre-release too.
_LOWEST: PreRelease = (0,)

# Each operator as a test of the sign of (version - bound).
_COMPARE: dict[str, Callable[[int], bool]] = {
    "<": lambda sign: sign < 0,
    "<=": lambda sign: sign <= 0,
    ">": lambda sign: sign > 0,
    ">=": lambda sign: sign >= 0,
    "=": lambda sign: sign == 0,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Comparator:
    op: str  # one of < <= > >= =
    version: Version

    def matches(self, v: Version) -> bool:
        a, b = v.precedence, self.version.precedence
        return _COMPARE[self.op]((a > b) - (a < b))

    def __str__(self) -> str:
        return f"{self.op}{self.version}"


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """Alternatives (`||`), each a set of comparators that must all hold."""

    text: str
    alternatives: tuple[tuple[Comparator, ...], ...]

    def matches(self, v: Version) -> bool:
        return any(_satisfies(v, comparators) for comparators in self.alternatives)

    def highest(self, versions: Iterable[Version]) -> Version | None:
        matching = [v for v in versions if self.matches(v)]
        return max(matching, key=lambda v: v.precedence) if matching else None

    def __str__(self) -> str:
        return self.text


def _satisfies(v: Version, comparators: tuple[Comparator, ...]) -> bool:
    if not all(c.matches(v) for c in comparators):
        return False
    if not v.prerelease:
        return True
    # A pre-release is admitted only by a range that asks for pre-releases of that version.
    return any(c.version.prerelease and c.version.core == v.core for c in comparators)


@dataclasses.dataclass(frozen=True, slots=True)
class _Partial:
    """`1`, `1.2`, `1.2.x`, `1.2.3-rc.1`: parts that are None are wildcards."""

    major: int | None
    minor: int | None
    patch: int | None
    prerelease: PreRelease

    def floor(self) -> Version:
        return Version(self.major or 0, self.minor or 0, self.patch or 0, self.prerelease)

    def next_up(self) -> Version:
        """The first version above everything this partial covers (only for partials)."""
        assert self.major is not None
        if self.minor is None:
            return Version(self.major + 1, 0, 0, _LOWEST)
        return Version(self.major, self.minor + 1, 0, _LOWEST)


def _partial(text: str, whole: str) -> _Partial:
    m = _PARTIAL.match(text)
    if m is None:
        raise RangeError(f"{text!r} in range {whole!r} is not a version")

    def part(name: str) -> int | None:
        value = m[name]
        return None if value is None or value in ("x", "X", "*") else int(value)

    major, minor, patch = part("major"), part("minor"), part("patch")
    # Anything after a wildcard is a wildcard too: 1.x.3 means 1.x.
    if major is None:
        minor = patch = None
    elif minor is None:
        patch = None
    prerelease = _prerelease(m["pre"]) if patch is not None else ()
    return _Partial(major, minor, patch, prerelease)


def _primitive(op: str, p: _Partial) -> list[Comparator]:
    full = p.patch is not None
    if p.major is None:  # >=* and =* are anything; <* and >* are nothing
        if op in ("<", ">"):
            return [Comparator("<", Version(0, 0, 0, _LOWEST))]
        return [Comparator(">=", Version(0, 0, 0))]
    if full:
        return [Comparator(op, p.floor())]
    if op == "=":
        return [Comparator(">=", p.floor()), Comparator("<", p.next_up())]
    if op == ">":
        return [Comparator(">=", dataclasses.replace(p.next_up(), prerelease=()))]
    if op == ">=":
        return [Comparator(">=", p.floor())]
    if op == "<":
        return [Comparator("<", dataclasses.replace(p.floor(), prerelease=_LOWEST))]
    return [Comparator("<", p.next_up())]  # <=


def _tilde(p: _Partial) -> list[Comparator]:
    # ~1.2.3 and ~1.2: patch updates; ~1: minor updates.
    if p.major is None:
        return _primitive(">=", p)
    if p.minor is None:
        return [Comparator(">=", p.floor()), Comparator("<", Version(p.major + 1, 0, 0, _LOWEST))]
    return [Comparator(">=", p.floor()), Comparator("<", Version(p.major, p.minor + 1, 0, _LOWEST))]


def _caret(p: _Partial) -> list[Comparator]:
    # ^ allows changes that do not modify the left-most non-zero part.
    if p.major is None:
        return _primitive(">=", p)
    if p.major > 0 or p.minor is None:
        upper = Version(p.major + 1, 0, 0, _LOWEST)
    elif p.minor > 0 or p.patch is None:
        upper = Version(0, p.minor + 1, 0, _LOWEST)
    else:
        upper = Version(0, 0, p.patch + 1, _LOWEST)
    return [Comparator(">=", p.floor()), Comparator("<", upper)]


def _hyphen(low: _Partial, high: _Partial) -> list[Comparator]:
    lower = _primitive(">=", low)
    if high.major is None:
        return lower
    upper = [Comparator("<=", high.floor())] if high.patch is not None else _primitive("<=", high)
    return [*lower, *upper]


def _tokens(alternative: str) -> list[str]:
    """Split on whitespace, joining an operator to the version after it (`>= 1.2` → `>=1.2`)."""
    tokens: list[str] = []
    pending = ""
    for word in alternative.split():
        if word in _OPERATORS:
            pending += word
            continue
        tokens.append(pending + word)
        pending = ""
    if pending:
        raise RangeError(f"operator {pending!r} without a version")
    return tokens


def parse_range(text: str) -> Range:
    """Parse an npm-style range; raises RangeError naming the part it cannot read."""
    alternatives: list[tuple[Comparator, ...]] = []
    for alternative in text.split("||"):
        words = alternative.split()
        if len(words) == 3 and words[1] == "-":
            comparators = _hyphen(_partial(words[0], text), _partial(words[2], text))
        elif not words:
            comparators = _primitive(">=", _Partial(None, None, None, ()))
        else:
            comparators = []
            for token in _tokens(alternative):
                comparators.extend(_comparators(token, text))
        alternatives.append(tuple(comparators))
    return Range(text.strip(), tuple(alternatives))


def _comparators(token: str, whole: str) -> list[Comparator]:
    for op in _OPERATORS:  # two-character operators are listed first
        if token.startswith(op):
            p = _partial(token[len(op) :], whole)
            if op == "~":
                return _tilde(p)
            if op == "^":
                return _caret(p)
            return _primitive(op, p)
    return _primitive("=", _partial(token, whole))
