"""Trust-bundle rollover as a pure state machine over data: which CAs are trusted, which issues.

A rollover goes through three steps, each safe on its own, so no connection fails on the way:

1. `rotate`: the new CA joins the bundle as INCOMING. It is trusted but does not issue yet, so
   the bundle that trusts it can reach every workload before any workload presents a certificate
   from it. It becomes the issuer once `grace` has passed.
2. `advance` promotes it: new certificates come from it; the old CA becomes PREVIOUS and stays in
   the bundle, because certificates it issued are still in use.
3. `advance` retires a PREVIOUS CA once no live certificate chains to it and `grace` has passed
   since the last one went (so every workload has loaded its replacement): it leaves the bundle.

Nothing here reads a clock, a file or a key: the caller passes `now` and the set of CA ids that
live certificates chain to, and stores the result.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any, Literal

from reconciler.identity.errors import RolloverError

# How long a new CA is trusted before it issues, and a drained one is kept after its last
# certificate went: long enough for sidecars to reload files they watch.
DEFAULT_GRACE = datetime.timedelta(minutes=1)


class Role(enum.StrEnum):
    ACTIVE = "active"  # trusted; issues every new certificate
    INCOMING = "incoming"  # trusted; issues once the bundle had time to reach every workload
    PREVIOUS = "previous"  # trusted until no live certificate chains to it


@dataclasses.dataclass(frozen=True, slots=True)
class TrustedCA:
    ca_id: str
    role: Role
    since: datetime.datetime  # when it took this role
    grace: datetime.timedelta = DEFAULT_GRACE
    drained_since: datetime.datetime | None = None  # PREVIOUS: since no live certificate chains

    @property
    def issues_from(self) -> datetime.datetime:
        """For an INCOMING CA: when it becomes the issuer."""
        return self.since + self.grace


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    kind: Literal["promoted", "retired"]
    ca_id: str

    def __str__(self) -> str:
        if self.kind == "promoted":
            return f"CA {self.ca_id} now issues; the previous CA stays trusted until it drains"
        return f"CA {self.ca_id} retired: no live certificate chains to it"


@dataclasses.dataclass(frozen=True, slots=True)
class TrustState:
    """The CAs in the trust bundle: one ACTIVE, then at most one INCOMING, then any PREVIOUS."""

    trust_domain: str
    authorities: tuple[TrustedCA, ...]

    def __post_init__(self) -> None:
        roles = [a.role for a in self.authorities]
        if roles.count(Role.ACTIVE) != 1 or roles.count(Role.INCOMING) > 1:
            raise ValueError(f"a trust state has one active CA and at most one incoming: {roles}")

    @property
    def active(self) -> TrustedCA:
        return next(a for a in self.authorities if a.role is Role.ACTIVE)

    @property
    def incoming(self) -> TrustedCA | None:
        return next((a for a in self.authorities if a.role is Role.INCOMING), None)

    @property
    def previous(self) -> tuple[TrustedCA, ...]:
        return tuple(a for a in self.authorities if a.role is Role.PREVIOUS)

    @property
    def trusted(self) -> tuple[str, ...]:
        """CA ids in the bundle, in bundle order: active, incoming, then previous."""
        return tuple(a.ca_id for a in self.authorities)

    def as_json(self) -> dict[str, Any]:
        return {
            "trustDomain": self.trust_domain,
            "authorities": [
                {
                    "caId": a.ca_id,
                    "role": str(a.role),
                    "since": _iso(a.since),
                    "graceSeconds": a.grace.total_seconds(),
                    "drainedSince": None if a.drained_since is None else _iso(a.drained_since),
                }
                for a in self.authorities
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrustState:
        return cls(
            data["trustDomain"],
            tuple(
                TrustedCA(
                    a["caId"],
                    Role(a["role"]),
                    datetime.datetime.fromisoformat(a["since"]),
                    datetime.timedelta(seconds=a["graceSeconds"]),
                    None
                    if a["drainedSince"] is None
                    else datetime.datetime.fromisoformat(a["drainedSince"]),
                )
                for a in data["authorities"]
            ),
        )


def start(trust_domain: str, ca_id: str, now: datetime.datetime) -> TrustState:
    return TrustState(trust_domain, (TrustedCA(ca_id, Role.ACTIVE, now),))


def rotate(
    state: TrustState,
    ca_id: str,
    now: datetime.datetime,
    grace: datetime.timedelta = DEFAULT_GRACE,
) -> TrustState:
    """Trust `ca_id` now; it issues after `grace`. One rollover at a time."""
    incoming = state.incoming
    if incoming is not None:
        raise RolloverError(
            f"a rollover to CA {incoming.ca_id} is already under way "
            f"(it issues from {_iso(incoming.issues_from)}); let it finish first"
        )
    if ca_id in state.trusted:
        raise RolloverError(f"CA {ca_id} is already in the trust bundle")
    if grace < datetime.timedelta(0):
        raise RolloverError(f"a rollover grace period cannot be negative (got {grace})")
    new = TrustedCA(ca_id, Role.INCOMING, now, grace)
    active, *rest = state.authorities
    return dataclasses.replace(state, authorities=(active, new, *rest))


def advance(
    state: TrustState, now: datetime.datetime, live: frozenset[str]
) -> tuple[TrustState, tuple[Change, ...]]:
    """Promote an INCOMING CA whose grace has passed; retire drained PREVIOUS CAs.

    `live` holds the ids of the CAs that currently valid stored certificates chain to.
    """
    changes: list[Change] = []
    active, incoming, previous = state.active, state.incoming, list(state.previous)
    if incoming is not None and now >= incoming.issues_from:
        previous.insert(0, TrustedCA(active.ca_id, Role.PREVIOUS, now, incoming.grace))
        active, incoming = TrustedCA(incoming.ca_id, Role.ACTIVE, now, incoming.grace), None
        changes.append(Change("promoted", active.ca_id))
    kept: list[TrustedCA] = []
    for ca in previous:
        if ca.ca_id in live:
            kept.append(dataclasses.replace(ca, drained_since=None))
            continue
        drained_since = ca.drained_since or now
        if now - drained_since >= ca.grace:
            changes.append(Change("retired", ca.ca_id))
        else:
            kept.append(dataclasses.replace(ca, drained_since=drained_since))
    authorities = (active, *([incoming] if incoming else []), *kept)
    return TrustState(state.trust_domain, authorities), tuple(changes)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat()
