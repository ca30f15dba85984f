"""Targets: where a DesiredState is made real. The loop drives any target through this small
interface and knows nothing else about it.

    observed = target.observe()
    plan = target.plan(desired, observed)     # what would change; empty when nothing would
    target.apply(plan)                        # creates and updates
    target.prune(plan)                        # deletes, only after apply succeeded
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from reconciler.compiler import DesiredState

Action = Literal["create", "update", "delete"]


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    action: Action
    key: str  # the object's name in the target, e.g. "sidecar/b/api/v1"
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
    revision: str
    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, *actions: Action) -> list[Change]:
        return [c for c in self.changes if c.action in actions]


class Target(Protocol):
    name: str

    def observe(self) -> Mapping[str, str]:
        """Every object this target runs for the mesh, by key, with a fingerprint of its spec."""

    def plan(self, desired: DesiredState, observed: Mapping[str, str]) -> Plan: ...

    def apply(self, plan: Plan) -> list[str]:
        """Create and update; returns the keys applied. Raises on the first failure."""

    def prune(self, plan: Plan) -> list[str]:
        """Delete what left the desired state; returns the keys removed."""

    def maintain(self) -> None:
        """Periodic upkeep between revisions (certificate renewal, restarts)."""

    def report(self, status: Mapping[str, Any]) -> None:
        """Publish the loop's status (its JSON form) where the target's users look for it; a
        target whose status file is enough does nothing."""

    def close(self) -> None:
        """Stop everything this target started."""
