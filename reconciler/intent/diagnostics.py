"""Diagnostics: what is wrong with an intent revision, and exactly where.

Every problem the loader or validator finds becomes one `Diagnostic` naming the file, line and
column, so `weft validate` can print all of them at once in the `file:line:col: error: message`
form editors and CI annotate.
"""

from __future__ import annotations

import dataclasses
import enum


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in an intent file; line and column count from 1, as editors show them."""

    file: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclasses.dataclass(frozen=True, slots=True)
class Diagnostic:
    position: Position
    severity: Severity
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.position}: {self.severity}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.position.file,
            "line": self.position.line,
            "column": self.position.column,
            "severity": str(self.severity),
            "message": self.message,
            "hint": self.hint,
        }


def sort_key(d: Diagnostic) -> tuple[Position, str]:
    return (d.position, d.message)


def has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diagnostics)


class IntentError(Exception):
    """Raised when a revision cannot be used; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=sort_key)
        errors = [d for d in self.diagnostics if d.severity is Severity.ERROR]
        super().__init__("\n".join(str(d) for d in errors) or "intent refused")
