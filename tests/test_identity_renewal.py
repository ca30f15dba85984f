"""Renewal timing: inside the window, spread across a fleet, immediate when late.

Time and randomness are injected: `now` is an argument and the RNG a seeded `random.Random`,
so these tests are instant and deterministic.
"""

from __future__ import annotations

import datetime
import random

import pytest

from reconciler.identity import authority, renewal
from reconciler.identity.renewal import RenewalWindow, Schedule
from reconciler.identity.spiffe import SpiffeId

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(hours=24)


@pytest.mark.parametrize(
    "window",
    [
        pytest.param(RenewalWindow(), id="default-45-55"),
        pytest.param(RenewalWindow(0.3, 0.4), id="early"),
        pytest.param(RenewalWindow(0.5, 0.5), id="no-jitter"),
        pytest.param(RenewalWindow(0.6, 0.9), id="late-and-wide"),
    ],
)
def test_renewal_times_stay_inside_the_window(window: RenewalWindow) -> None:
    rng = random.Random(7)
    low, high = T0 + DAY * window.low, T0 + DAY * window.high
    for _ in range(10_000):
        assert low <= renewal.renew_at(T0, T0 + DAY, window, rng) <= high


def test_a_fleet_issued_in_one_second_does_not_renew_in_one_second() -> None:
    rng = random.Random(42)
    times = [renewal.renew_at(T0, T0 + DAY, RenewalWindow(), rng) for _ in range(5_000)]
    seconds = {t.replace(microsecond=0) for t in times}
    # Uniform over the 8,640 s of the window: about 3,800 distinct seconds are expected.
    assert len(seconds) > 3_000
    assert max(times) - min(times) > datetime.timedelta(hours=2)


def test_real_certificates_spread_and_keep_their_time_across_restarts() -> None:
    ca = authority.generate("test.local", T0)
    issuer = ca.issuer()
    certs = [
        issuer.issue(SpiffeId("test.local", "ns", f"sa{i}"), DAY, T0).certificate
        for i in range(200)
    ]
    window = RenewalWindow()
    schedules = [renewal.schedule(c, window) for c in certs]
    assert len({s.renew_at for s in schedules}) > 190
    for cert, s in zip(certs, schedules, strict=True):
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert cert.not_valid_before_utc + lifetime * 0.45 <= s.renew_at
        assert s.renew_at <= cert.not_valid_before_utc + lifetime * 0.55
        assert renewal.schedule(cert, window) == s  # a restart computes the same time


@pytest.mark.parametrize(
    ("now", "due"),
    [
        pytest.param(T0, False, id="fresh"),
        pytest.param(T0 + DAY * 0.44, False, id="before-window"),
        pytest.param(T0 + DAY * 0.5 - datetime.timedelta(seconds=1), False, id="just-before"),
        pytest.param(T0 + DAY * 0.5, True, id="at-renewal-time"),
        pytest.param(T0 + DAY * 0.9, True, id="expiring-soon"),
        pytest.param(T0 + DAY, True, id="at-expiry"),
        pytest.param(T0 + 3 * DAY, True, id="long-expired"),
    ],
)
def test_due(now: datetime.datetime, due: bool) -> None:
    assert Schedule(renew_at=T0 + DAY * 0.5, not_after=T0 + DAY).due(now) is due


def test_an_expired_certificate_is_due_even_with_a_late_window() -> None:
    schedule = Schedule(renew_at=T0 + 2 * DAY, not_after=T0 + DAY)  # a nonsensical input
    assert schedule.due(T0 + DAY)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        pytest.param(0.0, 0.5, id="zero"),
        pytest.param(0.6, 0.5, id="inverted"),
        pytest.param(0.5, 1.0, id="at-expiry"),
    ],
)
def test_window_bounds_are_checked(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="renewal window needs 0 < low <= high < 1"):
        RenewalWindow(low, high)
