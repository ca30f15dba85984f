"""The reconcile loop: fetch → load and validate → compile → observe → plan → apply → prune →
status, once per new revision, driving any Target through its small interface.

A revision with any validation error is refused whole: nothing of it is applied, the last good
revision stays in force, and the status names the errors with file and line. A revision that
compiles to what already runs writes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from reconciler import compiler, intent
from reconciler import status as status_
from reconciler.intent.files import Snapshot
from reconciler.targets import Target

log = logging.getLogger("weft.loop")


class Source(Protocol):
    """Where revisions come from (a git remote, a local repository)."""

    def fetch(self) -> str | None:
        """The new revision, or None when it has not changed. Raises when unreachable."""

    def snapshot(self, revision: str) -> Snapshot: ...


class Reconciler:
    def __init__(self, source: Source, target: Target, status_path: Path) -> None:
        self.source, self.target, self.status_path = source, target, status_path
        self.status = status_.read(status_path) or status_.Status()
        self.current: str | None = None  # the revision this process has applied

    def _write(self) -> None:
        status_.write(self.status_path, self.status)

    def reconcile(self, revision: str) -> bool:
        """Make the target match `revision`. Returns True when it was applied."""
        started = time.monotonic()
        s = self.status
        s.reconciles += 1
        s.last_attempted_revision = revision
        s.set("Reconciling", True, "Progressing", f"reconciling {revision}")
        self._write()
        try:
            mesh, diagnostics = intent.check(self.source.snapshot(revision))
            if mesh is None:
                s.errors = [str(d) for d in diagnostics if d.severity is intent.Severity.ERROR]
                s.set(
                    "Stalled", True, "ValidationFailed", f"{len(s.errors)} error(s) in {revision}"
                )
                s.set(
                    "Ready",
                    s.last_applied_revision is not None,
                    "ValidationFailed",
                    f"{revision} refused; {s.last_applied_revision or 'nothing'} stays in force",
                )
                log.error("revision %s refused:\n%s", revision, "\n".join(s.errors))
                return False
            desired = compiler.compile(mesh)
            plan = self.target.plan(desired, self.target.observe())
            applied = self.target.apply(plan)
            removed = self.target.prune(plan)
            s.errors = []
            s.last_applied_revision = revision
            s.last_success_time = time.time()
            s.set("Stalled", False, "Succeeded")
            s.set(
                "Ready",
                True,
                "Succeeded",
                f"applied {revision}: {len(applied)} changed, {len(removed)} removed",
            )
            self.current = revision
            log.info("applied %s: %d changed, %d removed", revision, len(applied), len(removed))
            return True
        except Exception as e:  # a failed apply is reported and retried, never fatal
            s.errors = [f"{type(e).__name__}: {e}"]
            s.set("Stalled", True, "ApplyFailed", str(e))
            s.set("Ready", False, "ApplyFailed", f"{revision} not applied")
            log.exception("reconcile of %s failed", revision)
            return False
        finally:
            s.last_duration_seconds = time.monotonic() - started
            s.set("Reconciling", False, "Idle")
            self._write()

    def run(
        self,
        stop: threading.Event,
        wake: threading.Event,
        poll_seconds: float = 15.0,
        on_applied: Callable[[str], None] | None = None,
    ) -> None:
        """Poll the source until `stop`; `wake` (the webhook) triggers an immediate fetch."""
        failed: str | None = None
        while not stop.is_set():
            try:
                revision = self.source.fetch()
            except Exception as e:
                self.status.set("Stalled", True, "FetchFailed", str(e))
                self._write()
                log.warning("fetch failed: %s", e)
                revision = None
            if revision is None and failed is not None:
                revision = failed  # retry a revision whose apply failed
            if revision is not None and revision != self.current:
                ok = self.reconcile(revision)
                failed = (
                    None
                    if ok or self.status.conditions["Stalled"].reason == "ValidationFailed"
                    else revision
                )
                if ok and on_applied:
                    on_applied(revision)
            self.target.maintain()
            wake.wait(poll_seconds)
            wake.clear()
