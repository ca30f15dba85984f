"""When to fetch next: a jittered poll interval, and exponential backoff after failures.

Jitter keeps a fleet of reconcilers (or one restarted with many sources) from polling a git
server in lockstep. Both take their random source and clock as arguments, so tests are exact
and instant.

    try:
        revision = source.fetch()
    except gitsource.FetchError:
        delay = backoff.next_delay()       # 2 s, 4 s, 8 s … up to 5 min, each ±20 %
    else:
        backoff.reset()
        delay = schedule.next_delay()      # 15 s ±10 %
    wake.wait(delay)                       # a webhook sets `wake` to fetch at once
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

DEFAULT_POLL_INTERVAL = 15.0  # seconds
DEFAULT_POLL_JITTER = 0.10  # ±10 %
DEFAULT_BACKOFF_INITIAL = 2.0
DEFAULT_BACKOFF_MULTIPLIER = 2.0
DEFAULT_BACKOFF_MAXIMUM = 300.0
DEFAULT_BACKOFF_JITTER = 0.20


def _jittered(rng: random.Random, seconds: float, jitter: float) -> float:
    return seconds * (1.0 + rng.uniform(-jitter, jitter))


class PollSchedule:
    """A poll every `interval` seconds, each interval drawn within ±`jitter` of it."""

    def __init__(
        self,
        interval: float = DEFAULT_POLL_INTERVAL,
        jitter: float = DEFAULT_POLL_JITTER,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or not 0 <= jitter < 1:
            raise ValueError(f"poll interval {interval} s with jitter {jitter}: need >0 and [0, 1)")
        self.interval = interval
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._clock = clock
        self._due: float | None = None

    def next_delay(self) -> float:
        """A fresh jittered interval."""
        return _jittered(self._rng, self.interval, self.jitter)

    def polled(self) -> float:
        """Record a poll now (scheduled or not) and return the seconds until the next is due."""
        delay = self.next_delay()
        self._due = self._clock() + delay
        return delay

    def remaining(self) -> float:
        """Seconds until the next poll is due; 0 when it is due or none has happened."""
        if self._due is None:
            return 0.0
        return max(0.0, self._due - self._clock())


class Backoff:
    """Delays after consecutive failures: initial * multiplier^n, jittered, never above maximum."""

    def __init__(
        self,
        initial: float = DEFAULT_BACKOFF_INITIAL,
        multiplier: float = DEFAULT_BACKOFF_MULTIPLIER,
        maximum: float = DEFAULT_BACKOFF_MAXIMUM,
        jitter: float = DEFAULT_BACKOFF_JITTER,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= maximum, multiplier >= 1, jitter [0, 1)")
        self.initial = initial
        self.multiplier = multiplier
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        # The exponent stops growing once past the cap, so the float never overflows.
        base = self.initial * self.multiplier ** min(self.failures, 64)
        self.failures += 1
        return min(self.maximum, _jittered(self._rng, min(base, self.maximum), self.jitter))

    def reset(self) -> None:
        """A success: the next failure starts again at `initial`."""
        self.failures = 0
