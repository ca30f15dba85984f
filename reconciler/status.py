"""Reconcile status: conditions Ready / Reconciling / Stalled / CertificateWarning, the
revisions attempted and applied, errors, durations, and the expiry of every certificate —
written atomically to a JSON file that `weft status` reads.

`lastAppliedRevision` advances only after apply and prune both succeeded; a refused revision
leaves it, and the mesh, where they were. Certificates appear as `identity.status` describes
them: SPIFFE IDs, issuers, serials and validity, never a key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from reconciler import conditions, identity

CERTIFICATE_WARNING = conditions.CERTIFICATE_WARNING
_DIAGNOSTIC = re.compile(r"\S.*:\d+:\d+: (error|warning): ")
# As `weft ca status`: a 24 h certificate renews at 11-13 h of age, so 8 h left means renewal
# has failed for hours; CAs are warned about 30 days ahead whatever this says.
WARN_BEFORE = identity.status.DEFAULT_WARN_BEFORE
_CONCERNS = {
    identity.status.Concern.EXPIRED: "expired",
    identity.status.Concern.EXPIRING: "expiring soon",
    identity.status.Concern.RENEWAL_OVERDUE: "renewal overdue",
    identity.status.Concern.NOT_YET_VALID: "not valid yet",
    identity.status.Concern.UNUSABLE: "unusable",
}


@dataclasses.dataclass
class Condition:
    type: str  # one of the types in `conditions`
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
    certificates: identity.status.Status | None = None
    certificates_checked_at: datetime.datetime | None = None  # when the warnings were worked out
    # The signature check of the last attempted revision (gitsource.signatures.Verdict.as_json)
    # when trusted keys are configured: commit, signed object, signer, key, reason.
    signature: dict[str, Any] | None = None

    def set(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        old = self.conditions.get(type_)
        if old and (old.status, old.reason, old.message) == (status, reason, message):
            return
        self.conditions[type_] = Condition(type_, status, reason, message)

    def assess_certificates(
        self, certificates: identity.status.Status, now: datetime.datetime
    ) -> None:
        """Record `certificates` and set CertificateWarning as of `now`. The reconciler calls
        this after each look at the identity store; `weft status` calls it again with the
        current time, so the certificates of a reconciler that stopped still show running out.

        The message names subjects and concerns, not countdowns, so the condition (and its
        `since`) changes only when what is wrong changes."""
        self.certificates, self.certificates_checked_at = certificates, now
        found = identity.status.findings(certificates, now, WARN_BEFORE)
        if not found:
            self.set(
                CERTIFICATE_WARNING,
                False,
                conditions.VALID,
                f"{len(certificates.workloads)} identities and "
                f"{len(certificates.authorities)} CA(s) valid",
            )
            return
        worst = min((f.concern for f in found), key=list(identity.status.Concern).index)
        shown = [f"{f.subject} {_CONCERNS[f.concern]}" for f in found[:5]]
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        self.set(CERTIFICATE_WARNING, True, worst.value, ", ".join(shown) + more)

    def certificates_expired(self) -> list[str]:
        if self.certificates is None or self.certificates_checked_at is None:
            return []
        return identity.status.expired(self.certificates, self.certificates_checked_at)

    def as_json(self) -> dict[str, Any]:
        certificates = None
        if self.certificates is not None and self.certificates_checked_at is not None:
            certificates = {
                "checkedAt": identity.clock.timestamp(self.certificates_checked_at),
                **identity.status.as_json(
                    self.certificates, self.certificates_checked_at, WARN_BEFORE
                ),
            }
        return {
            "conditions": [dataclasses.asdict(c) for c in self.conditions.values()],
            "lastAttemptedRevision": self.last_attempted_revision,
            "lastAppliedRevision": self.last_applied_revision,
            "errors": self.errors,
            "lastDurationSeconds": self.last_duration_seconds,
            "lastSuccessTime": self.last_success_time,
            "reconciles": self.reconciles,
            "certificates": certificates,
            "signature": self.signature,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Status:
        certificates = data.get("certificates")
        return Status(
            conditions={c["type"]: Condition(**c) for c in data.get("conditions", [])},
            last_attempted_revision=data.get("lastAttemptedRevision"),
            last_applied_revision=data.get("lastAppliedRevision"),
            errors=list(data.get("errors", [])),
            last_duration_seconds=data.get("lastDurationSeconds"),
            last_success_time=data.get("lastSuccessTime"),
            reconciles=int(data.get("reconciles", 0)),
            certificates=identity.status.from_json(certificates) if certificates else None,
            certificates_checked_at=(
                identity.clock.parse_timestamp(certificates["checkedAt"]) if certificates else None
            ),
            signature=data.get("signature"),
        )


def write(path: Path, status: Status) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(status.as_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        # A full disk fails the write: leave the old status, not a stray half of the new one.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(path: Path) -> Status | None:
    try:
        return Status.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def render(status: Status) -> str:
    lines = []
    width = max((len(t) for t in status.conditions), default=0)
    for c in status.conditions.values():
        lines.append(f"{c.type:<{width}}  {c.status!s:<6} {c.reason}: {c.message}".rstrip(": "))
    lines.append(f"last applied revision:   {status.last_applied_revision or '-'}")
    lines.append(f"last attempted revision: {status.last_attempted_revision or '-'}")
    if status.last_duration_seconds is not None:
        lines.append(f"last reconcile took:     {status.last_duration_seconds:.3f} s")
    if status.signature is not None:
        sig = status.signature
        who = sig.get("signer") or ("an unknown signer" if sig.get("key") else "nobody")
        key = f" ({sig.get('format')} key {sig['key']})" if sig.get("key") else ""
        verdict = "trusted" if sig.get("trusted") else "REFUSED"
        lines.append(f"signature:               {sig.get('object')} {verdict}: {sig.get('reason')}")
        lines.append(f"  signed by {who}{key}")
    # An intent diagnostic already reads `file:line:col: error: ...`; only bare messages (an apply
    # that failed) need the prefix that makes every error line start at the margin.
    lines += [e if _DIAGNOSTIC.match(e) else f"error: {e}" for e in status.errors]
    if status.certificates is not None and status.certificates_checked_at is not None:
        lines.append(
            f"certificates, as of {identity.clock.timestamp(status.certificates_checked_at)}:"
        )
        text = identity.status.render(
            status.certificates, status.certificates_checked_at, WARN_BEFORE
        )
        # Warnings stay at the margin, like errors, where a reader scanning the output sees them.
        lines += [x if x.startswith("warning: ") else f"  {x}" for x in text.splitlines()]
    return "\n".join(lines) + "\n"
