"""What `weft ca status` shows: the CAs in the bundle, every identity, and warnings.

`read` gathers public facts only — CA chains, workload certificates, and whether each stored key
belongs to its certificate — into plain data that holds no key; rendering and warnings are pure
functions of that data and `now` (and so are the Prometheus gauges in `metrics`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

from cryptography import x509

from reconciler.identity import renewal, workload
from reconciler.identity.ca import read_state
from reconciler.identity.clock import normalise, parse_timestamp, timestamp
from reconciler.identity.renewal import RenewalWindow
from reconciler.identity.rollover import Role
from reconciler.identity.store import Store, WorkloadKey

# A CA takes a rollover to replace: warn a month ahead, whatever --warn-before says for leaves.
CA_WARN_BEFORE = datetime.timedelta(days=30)
DEFAULT_WARN_BEFORE = datetime.timedelta(hours=8)


@dataclasses.dataclass(frozen=True, slots=True)
class CAStatus:
    ca_id: str
    role: Role
    subject: str
    serial: int
    not_after: datetime.datetime  # the earliest notAfter in its chain
    issues_from: datetime.datetime | None  # an incoming CA: when it starts issuing
    live_certificates: int  # stored, unexpired workload certificates that chain to it


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadStatus:
    key: WorkloadKey
    spiffe_id: str | None
    issuer: str | None  # the CA id it chains to; None when that CA is not in the bundle
    serial: int | None
    not_before: datetime.datetime | None
    not_after: datetime.datetime | None
    renew_at: datetime.datetime | None
    problem: str | None  # unreadable files or a key that is not the certificate's


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    location: str
    trust_domain: str
    authorities: tuple[CAStatus, ...]
    workloads: tuple[WorkloadStatus, ...]


def read(store: Store, now: datetime.datetime, window: RenewalWindow = RenewalWindow()) -> Status:  # noqa: B008
    now = normalise(now)
    state = read_state(store)
    chains = {a.ca_id: store.read_ca_chain(a.ca_id) for a in state.authorities}
    by_key = {workload.key_id(chain[0]): ca_id for ca_id, chain in chains.items()}
    workloads = tuple(_workload(store, key, by_key, window) for key in store.workloads())
    live: dict[str, int] = {}
    for w in workloads:
        if w.issuer is not None and w.not_after is not None and now < w.not_after:
            live[w.issuer] = live.get(w.issuer, 0) + 1
    authorities = tuple(
        CAStatus(
            a.ca_id,
            a.role,
            chains[a.ca_id][0].subject.rfc4514_string(),
            chains[a.ca_id][0].serial_number,
            min(c.not_valid_after_utc for c in chains[a.ca_id]),
            a.issues_from if a.role is Role.INCOMING else None,
            live.get(a.ca_id, 0),
        )
        for a in state.authorities
    )
    return Status(store.location, state.trust_domain, authorities, workloads)


def _workload(
    store: Store, key: WorkloadKey, by_key: dict[bytes, str], window: RenewalWindow
) -> WorkloadStatus:
    stored = store.read_workload(key)
    leaf: x509.Certificate | None = stored.leaf if stored else None
    if stored is None or leaf is None:
        return WorkloadStatus(key, None, None, None, None, None, None, "certificate unreadable")
    spiffe_id = workload.spiffe_id_of(leaf)
    return WorkloadStatus(
        key,
        None if spiffe_id is None else str(spiffe_id),
        by_key.get(workload.issuer_key_id(leaf) or b""),
        leaf.serial_number,
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        normalise(renewal.schedule(leaf, window).renew_at),  # whole seconds, as shown
        None if stored.key_matches else "key missing or not the certificate's",
    )


def _name(w: WorkloadStatus) -> str:
    return w.spiffe_id or str(w.key)


def next_renewal(status: Status) -> datetime.datetime | None:
    """The earliest moment a stored certificate becomes due: when a loop should next run."""
    return min((w.renew_at for w in status.workloads if w.renew_at is not None), default=None)


def expired(status: Status, now: datetime.datetime) -> list[str]:
    """Everything past its notAfter: CAs by id, identities by SPIFFE ID."""
    return [f"CA {a.ca_id}" for a in status.authorities if now >= a.not_after] + [
        _name(w) for w in status.workloads if w.not_after is not None and now >= w.not_after
    ]


class Concern(enum.StrEnum):
    """What a warning is about, most urgent first (the reconciler's status names the first)."""

    EXPIRED = "Expired"
    EXPIRING = "ExpiringSoon"
    RENEWAL_OVERDUE = "RenewalOverdue"
    NOT_YET_VALID = "NotYetValid"
    UNUSABLE = "Unusable"  # unreadable, a key that is not the certificate's, or no CA for it


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One warning: whom it is about (`CA <id>` or a SPIFFE ID), what, and the full message."""

    subject: str
    concern: Concern
    message: str


def findings(
    status: Status, now: datetime.datetime, warn_before: datetime.timedelta
) -> list[Finding]:
    found: list[Finding] = []
    for a in status.authorities:
        subject = f"CA {a.ca_id}"
        if now >= a.not_after:
            found.append(
                Finding(subject, Concern.EXPIRED, f"{subject} expired at {timestamp(a.not_after)}")
            )
        elif a.not_after - now <= max(warn_before, CA_WARN_BEFORE):
            found.append(
                Finding(
                    subject,
                    Concern.EXPIRING,
                    f"{subject} expires at {timestamp(a.not_after)} "
                    f"(in {_span(a.not_after - now)}); start a rollover with `weft ca rotate`",
                )
            )
    for w in status.workloads:
        name = _name(w)
        if w.problem is not None:
            found.append(Finding(name, Concern.UNUSABLE, f"{name}: {w.problem}"))
        if w.not_after is None:
            continue
        if now >= w.not_after:
            found.append(
                Finding(name, Concern.EXPIRED, f"{name} expired at {timestamp(w.not_after)}")
            )
        elif w.not_before is not None and now < w.not_before:  # a clock that jumped back
            found.append(
                Finding(
                    name,
                    Concern.NOT_YET_VALID,
                    f"{name} is not valid until {timestamp(w.not_before)}",
                )
            )
        elif w.not_after - now <= warn_before:
            found.append(
                Finding(
                    name,
                    Concern.EXPIRING,
                    f"{name} expires at {timestamp(w.not_after)} (in {_span(w.not_after - now)})",
                )
            )
        elif w.renew_at is not None and now >= w.renew_at:
            found.append(
                Finding(
                    name,
                    Concern.RENEWAL_OVERDUE,
                    f"{name}: renewal overdue since {timestamp(w.renew_at)}",
                )
            )
        if w.issuer is None:
            found.append(
                Finding(name, Concern.UNUSABLE, f"{name} chains to no CA in the trust bundle")
            )
    return found


def warnings(status: Status, now: datetime.datetime, warn_before: datetime.timedelta) -> list[str]:
    return [f.message for f in findings(status, now, warn_before)]


def render(status: Status, now: datetime.datetime, warn_before: datetime.timedelta) -> str:
    lines = [f"{status.location} (trust domain {status.trust_domain})", "CAs in the trust bundle:"]
    for a in status.authorities:
        lines.append(
            f"  {a.role:<8}  {a.ca_id}  serial {a.serial:x}  notAfter {timestamp(a.not_after)}  "
            f"{a.live_certificates} live certificate(s)  {a.subject}"
            + (f"  issues from {timestamp(a.issues_from)}" if a.issues_from else "")
        )
    lines.append(f"identities ({len(status.workloads)}):")
    width = max((len(_name(w)) for w in status.workloads), default=0)
    for w in status.workloads:
        if w.not_after is None or w.serial is None:
            lines.append(f"  {_name(w):<{width}}  {w.problem}")
            continue
        lines.append(
            f"  {_name(w):<{width}}  issuer {w.issuer or 'unknown'}  serial {w.serial:x}  "
            f"notAfter {timestamp(w.not_after)}"
            + (f"  renew at {timestamp(w.renew_at)}" if w.renew_at else "")
        )
    lines.extend(f"warning: {text}" for text in warnings(status, now, warn_before))
    return "\n".join(lines) + "\n"


def as_json(
    status: Status, now: datetime.datetime, warn_before: datetime.timedelta
) -> dict[str, Any]:
    def time(moment: datetime.datetime | None) -> str | None:
        return None if moment is None else timestamp(moment)

    return {
        "location": status.location,
        "trustDomain": status.trust_domain,
        "authorities": [
            {
                "caId": a.ca_id,
                "role": str(a.role),
                "subject": a.subject,
                "serial": f"{a.serial:x}",
                "notAfter": time(a.not_after),
                "issuesFrom": time(a.issues_from),
                "liveCertificates": a.live_certificates,
            }
            for a in status.authorities
        ],
        "identities": [
            {
                "namespace": w.key.namespace,
                "serviceAccount": w.key.service_account,
                "spiffeId": w.spiffe_id,
                "issuer": w.issuer,
                "serial": None if w.serial is None else f"{w.serial:x}",
                "notBefore": time(w.not_before),
                "notAfter": time(w.not_after),
                "renewAt": time(w.renew_at),
                "problem": w.problem,
            }
            for w in status.workloads
        ],
        "warnings": warnings(status, now, warn_before),
        "expired": expired(status, now),
    }


def from_json(data: dict[str, Any]) -> Status:
    """The facts of `as_json` read back (warnings are not: they depend on when one looks).
    Raises KeyError or ValueError on data `as_json` did not write."""

    def time(text: str | None) -> datetime.datetime | None:
        return None if text is None else parse_timestamp(text)

    def serial(text: str | None) -> int | None:
        return None if text is None else int(text, 16)

    return Status(
        data["location"],
        data["trustDomain"],
        tuple(
            CAStatus(
                a["caId"],
                Role(a["role"]),
                a["subject"],
                int(a["serial"], 16),
                parse_timestamp(a["notAfter"]),
                time(a.get("issuesFrom")),
                int(a["liveCertificates"]),
            )
            for a in data["authorities"]
        ),
        tuple(
            WorkloadStatus(
                WorkloadKey(w["namespace"], w["serviceAccount"]),
                w.get("spiffeId"),
                w.get("issuer"),
                serial(w.get("serial")),
                time(w.get("notBefore")),
                time(w.get("notAfter")),
                time(w.get("renewAt")),
                w.get("problem"),
            )
            for w in data["identities"]
        ),
    )


def _span(delta: datetime.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
