"""Lease-based leader election (coordination.k8s.io/v1), as client-go does it.

Two reconciler replicas run; one holds the Lease `weft-system/weft-reconciler` and reconciles,
the other waits. The holder renews every `retry` seconds; a Lease not renewed for `duration`
seconds may be taken. Expiry is judged by when *this* process last saw the record change (a
monotonic clock), never by comparing the holder's timestamps with ours, so clock skew between
nodes cannot hand the Lease to two holders. A holder that cannot renew within `renew_deadline`
gives up leadership before anyone else may take it (renew_deadline < duration), and stops
writing. Every update carries the resourceVersion it read: two candidates racing for an expired
Lease cannot both win.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from reconciler.targets.kubernetes.api import Api, ApiError, UnreachableError

log = logging.getLogger("weft.leader")

LEASE_NAME = "weft-reconciler"


@dataclasses.dataclass(frozen=True)
class Timing:
    duration: float = 15.0  # a Lease not renewed this long may be taken
    renew_deadline: float = 10.0  # a holder that cannot renew this long steps down
    retry: float = 2.0  # how often to try to acquire or renew


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: Api,
        namespace: str,
        *,
        name: str = LEASE_NAME,
        identity: str | None = None,
        timing: Timing = Timing(),  # frozen, so one shared default is safe
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timing.retry < timing.renew_deadline < timing.duration:
            raise ValueError("leader election needs retry < renew_deadline < duration")
        self.api, self.namespace, self.name = api, namespace, name
        self.identity = identity or default_identity()
        self.timing = timing
        self._monotonic = monotonic
        self._observed: tuple[str, str, float] | None = None  # (holder, renewTime, seen at)
        self.leading = threading.Event()
        self.lost = threading.Event()  # set when leadership was lost (not given up)
        self._renewed = float("-inf")

    def holds(self) -> bool:
        """Whether this process may write now: it leads, and its last successful renewal began
        less than a renew deadline ago. A reconcile in flight when renewal stalls stops writing
        here, before another candidate may take the Lease (renew deadline < duration)."""
        return (
            self.leading.is_set() and self._monotonic() - self._renewed < self.timing.renew_deadline
        )

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this process holds the Lease afterwards."""
        now = datetime.datetime.now(datetime.UTC)
        lease = self.api.get("Lease", self.namespace, self.name)
        if lease is None:
            try:
                self.api.create(self._record(None, now))
            except ApiError as e:
                if e.status == 409:  # another candidate created it first
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = spec.get("renewTime") or ""
        seen = self._monotonic()
        if self._observed is None or self._observed[:2] != (holder, renewed):
            self._observed = (holder, renewed, seen)
        duration = float(spec.get("leaseDurationSeconds") or self.timing.duration)
        held_by_other = holder not in ("", self.identity)
        if held_by_other and self._observed[2] + duration > seen:
            return False
        try:
            self.api.replace(self._record(lease, now))
        except ApiError as e:
            if e.status == 409:  # someone else updated it since we read it
                return False
            raise
        return True

    def _record(self, lease: dict[str, Any] | None, now: datetime.datetime) -> dict[str, Any]:
        spec = dict((lease or {}).get("spec") or {})
        previous = spec.get("holderIdentity")
        if previous != self.identity:
            spec["acquireTime"] = _micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if previous else 0
            )
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=round(self.timing.duration),
            renewTime=_micro_time(now),
        )
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    def run(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        """Acquire, then renew until `stop`; call `on_lost` (once) if leadership is lost."""
        last_renewal = 0.0
        while not stop.is_set():
            attempt = self._monotonic()
            try:
                ok = self.try_acquire_or_renew()
            except Exception as e:  # whatever failed, this attempt did not renew
                log.warning("leader election: %s: %s", type(e).__name__, e)
                ok = False
            now = self._monotonic()
            if ok:
                last_renewal = attempt  # the Lease was valid from when the attempt began
                self._renewed = attempt
                if not self.leading.is_set():
                    log.info(
                        "%s is now the leader (Lease %s/%s)",
                        self.identity,
                        self.namespace,
                        self.name,
                    )
                    self.leading.set()
            elif self.leading.is_set() and now - last_renewal > self.timing.renew_deadline:
                log.error(
                    "%s lost the Lease: could not renew for %.0f s",
                    self.identity,
                    now - last_renewal,
                )
                self.leading.clear()
                self.lost.set()
                on_lost()
                return
            stop.wait(self.timing.retry)
        self.release()

    def release(self) -> None:
        """Step down on a clean stop, so the other replica need not wait out the Lease."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            lease = self.api.get("Lease", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                self.api.replace(lease)
        except (ApiError, UnreachableError) as e:
            log.warning("could not release the Lease: %s", e)
