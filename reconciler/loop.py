"""The reconcile loop: fetch → load and validate → compile → observe → plan → apply → prune →
status, once per new revision, driving any Target through its small interface.

With trusted keys configured, a revision not signed by one of them is refused whole before it is
even read: status and the trace name the commit, the signer (or its absence) and the reason.
A revision with any validation error is refused whole: nothing of it is applied, the last good
revision stays in force, and the status names the errors with file and line. A revision that
compiles to what already runs writes nothing.

After each reconcile and each tick's upkeep, the loop reads certificate expiry from the identity
store it is given (metadata only: `identity.status`) into the status, which it writes again
only when what it says about certificates changed.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from reconciler import compiler, conditions, identity, intent, telemetry
from reconciler import status as status_
from reconciler.gitsource.signatures import Verdict
from reconciler.intent.files import Snapshot
from reconciler.targets import Target

log = logging.getLogger("weft.loop")

BACKOFF_MAX = 300.0
_NOT_STALLED = status_.Condition(conditions.STALLED, False, "")

# What the loop knows of identity: a way to read certificate expiry (never keys) as of `now`.
CertificateReader = Callable[[datetime.datetime], identity.status.Status]


class Source(Protocol):
    """Where revisions come from (a git remote, a local repository)."""

    def fetch(self) -> str | None:
        """The new revision, or None when it has not changed. Raises when unreachable."""

    def verify(self, revision: str) -> Verdict | None:
        """Whether the revision is signed by a trusted key; None when none is required."""

    def snapshot(self, revision: str) -> Snapshot: ...


# Refused as they are: retrying the same revision cannot help.
REFUSED = (conditions.VALIDATION_FAILED, conditions.UNTRUSTED_REVISION)


class Reconciler:
    def __init__(
        self,
        source: Source,
        target: Target,
        status_path: Path,
        *,
        certificates: CertificateReader | None = None,
        clock: identity.clock.Clock = identity.clock.system,
    ) -> None:
        self.source, self.target, self.status_path = source, target, status_path
        self.certificates, self.clock = certificates, clock
        self.status = status_.read(status_path) or status_.Status()
        self.current: str | None = None  # the revision this process has applied
        self.metrics = telemetry.Metrics()

    def observe_certificates(self) -> bool:
        """Read certificate expiry into the status. True when that changed what the status
        says (the certificates, or the CertificateWarning condition), so it needs writing."""
        if self.certificates is None:
            return False
        now = self.clock()
        try:
            found = self.certificates(now)
        except identity.NotInitialisedError:
            return False  # no CA before the first revision is applied
        except Exception as e:  # reporting expiry must never stop the loop
            log.warning("cannot read certificate expiry: %s", e)
            return False
        s = self.status
        before = (s.certificates, s.conditions.get(conditions.CERTIFICATE_WARNING))
        s.assess_certificates(found, now)
        return (s.certificates, s.conditions.get(conditions.CERTIFICATE_WARNING)) != before

    def _write(self) -> None:
        try:
            status_.write(self.status_path, self.status)
        except OSError as e:
            # A full (or read-only) state disk must not stop the loop: the mesh keeps running
            # on the last good revision, and the target still gets the status below. The soak
            # found this (bench/soak.py): ENOSPC here killed `weft run` and every process it ran.
            log.warning("cannot write the status to %s: %s", self.status_path, e)
        try:
            self.target.report(self.status.as_json())
        except Exception as e:  # publishing status must never fail a reconcile
            log.warning("could not publish the status to the %s target: %s", self.target.name, e)

    def reconcile(self, revision: str, fetched: tuple[int, int] | None = None) -> bool:
        """Make the target match `revision`, as one trace. Returns True when it was applied.

        `fetched` is the (start, end) of the fetch that found the revision, in ns since the
        epoch, so the trace begins with it."""
        tracer = telemetry.tracer()
        start_ns = fetched[0] if fetched else None
        with tracer.start_as_current_span("reconcile", start_time=start_ns) as root:
            root.set_attribute("weft.revision", revision)
            if fetched:
                tracer.start_span("fetch", start_time=fetched[0]).end(end_time=fetched[1])
            return self._reconcile(revision, root)

    def _reconcile(self, revision: str, root: trace.Span) -> bool:
        tracer = telemetry.tracer()
        started = time.monotonic()
        s = self.status
        s.reconciles += 1
        s.last_attempted_revision = revision
        s.set(conditions.RECONCILING, True, conditions.PROGRESSING, f"reconciling {revision}")
        self._write()
        result, kind, objects = "failed", None, 0
        try:
            with tracer.start_as_current_span("verify") as span:
                verdict = self.source.verify(revision)
                span.set_attribute("weft.signature.required", verdict is not None)
                if verdict is not None:
                    span.set_attribute("weft.signature.commit", verdict.commit)
                    span.set_attribute("weft.signature.object", verdict.signed_object)
                    span.set_attribute("weft.signature.trusted", verdict.trusted)
                    span.set_attribute("weft.signature.reason", verdict.reason)
                    span.set_attribute("weft.signature.signer", verdict.signer or "none")
                    span.set_attribute("weft.signature.key", verdict.key or "none")
            s.signature = verdict.as_json() if verdict is not None else None
            if verdict is not None and not verdict.trusted:
                s.errors = [str(verdict)]
                s.set(
                    conditions.STALLED,
                    True,
                    conditions.UNTRUSTED_REVISION,
                    f"{revision}: {verdict}",
                )
                s.set(
                    conditions.READY,
                    s.last_applied_revision is not None,
                    conditions.UNTRUSTED_REVISION,
                    f"{revision} refused; {s.last_applied_revision or 'nothing'} stays in force",
                )
                root.set_status(Status(StatusCode.ERROR, f"untrusted revision: {verdict.reason}"))
                log.error("revision %s refused: %s", revision, verdict)
                result, kind = "refused", "signature"
                return False
            with tracer.start_as_current_span("validate"):
                mesh, diagnostics = intent.check(self.source.snapshot(revision))
            if mesh is None:
                s.errors = [str(d) for d in diagnostics if d.severity is intent.Severity.ERROR]
                s.set(
                    conditions.STALLED,
                    True,
                    conditions.VALIDATION_FAILED,
                    f"{len(s.errors)} error(s) in {revision}",
                )
                s.set(
                    conditions.READY,
                    s.last_applied_revision is not None,
                    conditions.VALIDATION_FAILED,
                    f"{revision} refused; {s.last_applied_revision or 'nothing'} stays in force",
                )
                root.set_status(Status(StatusCode.ERROR, f"{len(s.errors)} validation error(s)"))
                log.error("revision %s refused:\n%s", revision, "\n".join(s.errors))
                result, kind = "refused", "validation"
                return False
            with tracer.start_as_current_span("compile"):
                desired = compiler.compile(mesh)
            with tracer.start_as_current_span("plan") as span:
                plan = self.target.plan(desired, self.target.observe())
                span.set_attribute("weft.changes", len(plan.changes))
            with tracer.start_as_current_span("apply"):
                applied = self.target.apply(plan)
            with tracer.start_as_current_span("prune"):
                removed = self.target.prune(plan)
            s.errors = []
            s.last_applied_revision = revision
            s.last_success_time = time.time()
            s.set(conditions.STALLED, False, conditions.SUCCEEDED)
            s.set(
                conditions.READY,
                True,
                conditions.SUCCEEDED,
                f"applied {revision}: {len(applied)} changed, {len(removed)} removed",
            )
            self.current = revision
            result, objects = "applied", len(applied) + len(removed)
            log.info("applied %s: %d changed, %d removed", revision, len(applied), len(removed))
            return True
        except Exception as e:  # a failed apply is reported and retried, never fatal
            s.errors = [f"{type(e).__name__}: {e}"]
            s.set(conditions.STALLED, True, conditions.APPLY_FAILED, str(e))
            s.set(conditions.READY, False, conditions.APPLY_FAILED, f"{revision} not applied")
            root.record_exception(e)
            root.set_status(Status(StatusCode.ERROR, str(e)))
            kind = "apply"
            log.exception("reconcile of %s failed", revision)
            return False
        finally:
            s.last_duration_seconds = time.monotonic() - started
            s.set(conditions.RECONCILING, False, conditions.IDLE)
            self.observe_certificates()
            self._write()
            self.metrics.observe(s.last_duration_seconds, result, kind, objects)

    def run(
        self,
        stop: threading.Event,
        wake: threading.Event,
        poll_seconds: float = 15.0,
        on_applied: Callable[[str], None] | None = None,
        resync_seconds: float | None = None,
    ) -> None:
        """Poll the source until `stop`; `wake` (the webhook) triggers an immediate fetch. An
        unreachable source, and a revision whose apply failed, are retried with exponential
        back-off, up to BACKOFF_MAX seconds; the last good revision stays in force meanwhile.
        With `resync_seconds`, the applied revision is reconciled again that often even when
        nothing new was fetched, so drift in the target (a hand edit) is reverted."""
        failed: str | None = None
        fetch_failures = apply_failures = 0
        last_reconcile = time.monotonic()
        while not stop.is_set():
            fetch_started = time.time_ns()
            try:
                revision = self.source.fetch()
            except Exception as e:
                fetch_failures += 1
                self.metrics.observe(0.0, "fetch-failed", "fetch")
                self.status.set(conditions.STALLED, True, conditions.FETCH_FAILED, str(e))
                self._write()
                log.warning("fetch failed (%d in a row): %s", fetch_failures, e)
                revision = None
            else:
                if fetch_failures:
                    self.status.set(conditions.STALLED, False, conditions.RECOVERED)
                    self._write()
                fetch_failures = 0
            if revision is None and failed is not None:
                revision = failed  # retry a revision whose apply failed
            resync = (
                resync_seconds is not None
                and self.current is not None
                and time.monotonic() - last_reconcile >= resync_seconds
            )
            if revision is None and resync:
                revision = self.current
            fetched = (fetch_started, time.time_ns())
            if revision is not None and (revision != self.current or resync):
                ok = self.reconcile(revision, fetched)
                last_reconcile = time.monotonic()
                failed = (
                    None
                    if ok or self.status.conditions[conditions.STALLED].reason in REFUSED
                    else revision
                )
                apply_failures = 0 if failed is None else apply_failures + 1
                if ok and on_applied:
                    on_applied(revision)
            try:
                self.target.maintain()
            except Exception as e:  # an outage of the target is retried, never fatal
                apply_failures += 1
                self.metrics.observe(0.0, "maintain-failed", "maintain")
                self.status.set(conditions.STALLED, True, conditions.MAINTENANCE_FAILED, str(e))
                self._write()
                log.warning("upkeep of the %s target failed: %s", self.target.name, e)
            else:
                if self.status.conditions.get(conditions.STALLED, _NOT_STALLED).reason == (
                    conditions.MAINTENANCE_FAILED
                ):
                    self.status.set(conditions.STALLED, False, conditions.RECOVERED)
                    self._write()
                if failed is None:
                    apply_failures = 0
            if self.observe_certificates():
                self._write()
            failures = fetch_failures + apply_failures
            delay = poll_seconds * 2**failures if failures else poll_seconds
            # ±10 % jitter, so reconcilers started together do not fetch in lockstep.
            wake.wait(min(delay, BACKOFF_MAX) * random.uniform(0.9, 1.1))
            wake.clear()
