"""Reconcile status: conditions Ready / Reconciling / Stalled, the revisions attempted and
applied, errors, and durations — written atomically to a JSON file that `weft status` reads.

`lastAppliedRevision` advances only after apply and prune both succeeded; a refused revision
leaves it, and the mesh, where they were.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Condition:
    type: str  # Ready | Reconciling | Stalled
    status: bool
    reason: str
    message: str = ""
    since: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class Status:
    conditions: dict[str, Condition] = dataclasses.field(default_factory=dict)
    last_attempted_revision: str | None = None
    last_applied_revision: str | None = None
    errors: list[str] = dataclasses.field(default_factory=list)
    last_duration_seconds: float | None = None
    last_success_time: float | None = None
    reconciles: int = 0

    def set(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        old = self.conditions.get(type_)
        if old and (old.status, old.reason, old.message) == (status, reason, message):
            return
        self.conditions[type_] = Condition(type_, status, reason, message)

    def as_json(self) -> dict[str, Any]:
        return {
            "conditions": [dataclasses.asdict(c) for c in self.conditions.values()],
            "lastAttemptedRevision": self.last_attempted_revision,
            "lastAppliedRevision": self.last_applied_revision,
            "errors": self.errors,
            "lastDurationSeconds": self.last_duration_seconds,
            "lastSuccessTime": self.last_success_time,
            "reconciles": self.reconciles,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Status:
        return Status(
            conditions={c["type"]: Condition(**c) for c in data.get("conditions", [])},
            last_attempted_revision=data.get("lastAttemptedRevision"),
            last_applied_revision=data.get("lastAppliedRevision"),
            errors=list(data.get("errors", [])),
            last_duration_seconds=data.get("lastDurationSeconds"),
            last_success_time=data.get("lastSuccessTime"),
            reconciles=int(data.get("reconciles", 0)),
        )


def write(path: Path, status: Status) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status.")
    with os.fdopen(fd, "w") as f:
        json.dump(status.as_json(), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read(path: Path) -> Status | None:
    try:
        return Status.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def render(status: Status) -> str:
    lines = []
    for c in status.conditions.values():
        lines.append(f"{c.type:<12} {c.status!s:<6} {c.reason}: {c.message}".rstrip(": "))
    lines.append(f"last applied revision:   {status.last_applied_revision or '-'}")
    lines.append(f"last attempted revision: {status.last_attempted_revision or '-'}")
    if status.last_duration_seconds is not None:
        lines.append(f"last reconcile took:     {status.last_duration_seconds:.3f} s")
    lines += [f"error: {e}" for e in status.errors]
    return "\n".join(lines) + "\n"
