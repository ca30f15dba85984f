"""When a workload certificate is renewed: at about half its life, with jitter.

Renewing at half-life leaves the other half to retry if the CA or the store is briefly
unavailable. The jitter spreads a fleet issued in one second (a fresh cluster, a CA rollover)
over a window, so it does not come back to renew in one second either.

`renew_at` takes its random source as an argument so tests control it. Callers that need the
same answer on every run (a restarted reconciler must not renew early just because it drew a
different number) seed it from the certificate's serial: `schedule` does that.
"""

from __future__ import annotations

import dataclasses
import datetime
import random

from cryptography import x509

DEFAULT_LOW = 0.45
DEFAULT_HIGH = 0.55


@dataclasses.dataclass(frozen=True, slots=True)
class RenewalWindow:
    """Renew uniformly between these fractions of a certificate's validity period."""

    low: float = DEFAULT_LOW
    high: float = DEFAULT_HIGH

    def __post_init__(self) -> None:
        if not 0.0 < self.low <= self.high < 1.0:
            raise ValueError(
                f"a renewal window needs 0 < low <= high < 1 (got {self.low}, {self.high})"
            )


def renew_at(
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    window: RenewalWindow,
    rng: random.Random,
) -> datetime.datetime:
    """A moment drawn uniformly from the window of the validity period [not_before, not_after]."""
    lifetime = not_after - not_before
    return not_before + lifetime * rng.uniform(window.low, window.high)


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A certificate's renewal time, fixed once per certificate."""

    renew_at: datetime.datetime
    not_after: datetime.datetime

    def due(self, now: datetime.datetime) -> bool:
        """Past the renewal time; an expired certificate is always due."""
        return now >= self.renew_at or now >= self.not_after


def schedule(certificate: x509.Certificate, window: RenewalWindow) -> Schedule:
    """The renewal schedule of `certificate`, the same on every run (seeded by its serial)."""
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    moment = renew_at(not_before, not_after, window, random.Random(certificate.serial_number))
    return Schedule(moment, not_after)
