"""Lease-based leader election against a real API server.

Expiry is judged on each candidate's own monotonic clock, which the tests drive, so no test
waits out a Lease; the Lease itself, its resourceVersions and conflicts are the API server's.
"""

from __future__ import annotations

import threading

import pytest

from reconciler.targets.kubernetes import ApiError
from reconciler.targets.kubernetes.leader import LeaderElector, Timing
from tests.kube import ControlPlane, wait_for

TIMING = Timing(duration=6.0, renew_deadline=4.0, retry=0.2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(kube: ControlPlane, namespace: str, name: str, clock: Clock) -> LeaderElector:
    return LeaderElector(kube.admin(), namespace, identity=name, timing=TIMING, monotonic=clock)


def test_one_holder_at_a_time_and_takeover_after_the_lease(
    kube: ControlPlane, namespace: str
) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = elector(kube, namespace, "a", clock_a)
    b = elector(kube, namespace, "b", clock_b)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock_b.now += 5.0
    assert a.try_acquire_or_renew(), "the holder renews"
    assert not b.try_acquire_or_renew(), "a renewed Lease is observed afresh"
    clock_b.now += 5.0
    assert not b.try_acquire_or_renew(), "5 s since b saw the renewal: not expired yet"
    clock_b.now += 1.5  # a stops renewing (it died): b has now seen no change for 6.5 s
    assert b.try_acquire_or_renew()
    lease = kube.admin().get("Lease", namespace, "weft-reconciler")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew(), "the old holder cannot come back while b renews"


def test_a_clean_stop_releases_the_lease_at_once(kube: ControlPlane, namespace: str) -> None:
    a = LeaderElector(kube.admin(), namespace, identity="a", timing=TIMING)
    b = LeaderElector(kube.admin(), namespace, identity="b", timing=TIMING)
    stop_a, stop_b = threading.Event(), threading.Event()
    lost: list[str] = []
    ta = threading.Thread(target=a.run, args=(stop_a, lambda: lost.append("a")))
    ta.start()
    assert a.leading.wait(5)
    tb = threading.Thread(target=b.run, args=(stop_b, lambda: lost.append("b")))
    tb.start()
    try:
        assert not b.leading.wait(1.0), "b must wait while a holds the Lease"
        stop_a.set()
        ta.join(5)
        # Released, not expired: b takes it well inside the 6 s Lease.
        assert b.leading.wait(3.0)
        lease = kube.admin().get("Lease", namespace, "weft-reconciler")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "b"
    finally:
        stop_a.set()
        stop_b.set()
        ta.join(5)
        tb.join(5)
    assert lost == []


def test_a_holder_that_cannot_renew_steps_down(kube: ControlPlane, namespace: str) -> None:
    clock = Clock()
    a = elector(kube, namespace, "a", clock)
    stop = threading.Event()
    lost = threading.Event()
    thread = threading.Thread(target=a.run, args=(stop, lost.set))
    thread.start()
    try:
        assert a.leading.wait(5)
        # Another writer takes the Lease over behind a's back (as after a partition).
        api = kube.admin()

        def intrude() -> bool:
            lease = api.get("Lease", namespace, "weft-reconciler")
            assert lease is not None
            lease["spec"]["holderIdentity"] = "intruder"
            try:
                api.replace(lease)
            except ApiError as e:  # a renewed in between: read again
                if not e.conflict:
                    raise
                return False
            return True

        wait_for(intrude, timeout=5)
        clock.now += TIMING.renew_deadline + 0.5
        wait_for(lost.is_set, timeout=5)
        assert not a.leading.is_set()
    finally:
        stop.set()
        thread.join(5)


def test_timing_must_leave_room_to_step_down(kube: ControlPlane) -> None:
    with pytest.raises(ValueError, match="retry < renew_deadline < duration"):
        LeaderElector(kube.admin(), "x", timing=Timing(duration=5, renew_deadline=5, retry=1))
