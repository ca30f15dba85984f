"""Poll intervals and backoff: jittered, bounded, and exact under an injected clock and RNG."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from reconciler.gitsource import Backoff, PollSchedule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Extremes(random.Random):
    """Draws alternately the lowest and the highest value a uniform range allows."""

    def __init__(self) -> None:
        super().__init__(0)
        self.high = False

    def uniform(self, a: float, b: float) -> float:
        self.high = not self.high
        return a if self.high else b


def test_poll_interval_is_15s_within_10_percent() -> None:
    schedule = PollSchedule(rng=random.Random(7))
    delays = [schedule.next_delay() for _ in range(2000)]
    assert all(13.5 <= d <= 16.5 for d in delays)
    assert min(delays) < 13.6  # the whole band is used
    assert max(delays) > 16.4
    assert len(set(delays)) > 1900  # not in lockstep


def test_poll_schedule_extremes_and_clock() -> None:
    clock = Clock()
    schedule = PollSchedule(rng=Extremes(), clock=clock)
    assert schedule.remaining() == 0.0  # never polled: due now
    assert schedule.polled() == pytest.approx(13.5)
    clock.now += 10
    assert schedule.remaining() == pytest.approx(3.5)
    clock.now += 5
    assert schedule.remaining() == 0.0
    assert schedule.polled() == pytest.approx(16.5)  # a webhook fetch restarts the interval too
    assert schedule.remaining() == pytest.approx(16.5)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(rng=Extremes())  # 2 s, x2, 300 s cap, +-20 %
    delays = [backoff.next_delay() for _ in range(12)]
    low, high = 0.8, 1.2
    expected = [
        2 * low, 4 * high, 8 * low, 16 * high, 32 * low, 64 * high, 128 * low,
        min(300, 256 * high), 300 * low, 300, 300 * low, 300,
    ]  # fmt: skip
    assert delays == pytest.approx(expected)
    assert backoff.failures == 12
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == pytest.approx(2 * low)  # starts over


def test_backoff_never_exceeds_the_cap_nor_overflows() -> None:
    backoff = Backoff(initial=1, multiplier=10, maximum=60, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(1000)]
    assert all(0 < d <= 60 for d in delays)
    assert delays[-1] >= 48  # at the cap, jitter only takes away


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: PollSchedule(interval=0), "poll interval", id="zero-interval"),
        pytest.param(lambda: PollSchedule(jitter=1.0), "poll interval", id="full-jitter"),
        pytest.param(lambda: Backoff(initial=10, maximum=5), "backoff", id="initial-over-cap"),
        pytest.param(lambda: Backoff(multiplier=0.5), "backoff", id="shrinking"),
    ],
)
def test_nonsense_is_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
