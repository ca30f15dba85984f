"""Report: the loop's status published as ConfigMap weft-system/weft-status, and an Event when
the outcome changed, where `kubectl` users look. A reconcile that changed nothing writes
nothing here either."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any

from reconciler import conditions
from reconciler.targets.kubernetes import objects
from reconciler.targets.kubernetes.api import Api


class Reporter:
    def __init__(self, api: Api, namespace: str, clock: Callable[[], datetime.datetime]) -> None:
        self.api, self.namespace, self._clock = api, namespace, clock
        self._reported: tuple[Any, ...] | None = None

    def report(self, status: Mapping[str, Any]) -> None:
        found = {c["type"]: c for c in status.get("conditions", [])}
        key = (
            status.get("lastAttemptedRevision"),
            status.get("lastAppliedRevision"),
            tuple(status.get("errors", [])),
            # Reconciling flips on and off around every reconcile: it is not worth two writes.
            tuple(
                (t, c.get("status"), c.get("reason"), c.get("message"))
                for t, c in sorted(found.items())
                if t != conditions.RECONCILING
            ),
        )
        if key == self._reported:
            return
        self.api.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": objects.STATUS,
                    "namespace": self.namespace,
                    "labels": objects.labels("status"),
                },
                "data": {"status.json": json.dumps(status, indent=2, sort_keys=True) + "\n"},
            },
            force=True,
        )
        ready = found.get(conditions.READY, {})
        stalled = found.get(conditions.STALLED, {})
        source = stalled if stalled.get("status") else ready
        reason = str(source.get("reason") or conditions.RECONCILED)
        message = str(source.get("message") or "")
        self._event(reason, message, warning=bool(stalled.get("status")))
        self._reported = key

    def _event(self, reason: str, message: str, *, warning: bool) -> None:
        now = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        self.api.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": "weft-reconcile.", "namespace": self.namespace},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": objects.STATUS,
                    "namespace": self.namespace,
                },
                "reason": reason,
                "message": message[:1024],
                "type": "Warning" if warning else "Normal",
                "source": {"component": "weft"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )
