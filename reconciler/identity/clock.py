"""Time as identity uses it: timezone-aware UTC, in whole seconds.

X.509 validity has no fractions of a second; rounding `now` down once, where it enters, keeps
a certificate's stored times equal to the ones computed when it was issued. Every function that
depends on time takes `now` from its caller, so tests inject it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

Clock = Callable[[], datetime.datetime]


def system() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def normalise(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None:
        raise ValueError("identity needs timezone-aware times (use datetime.UTC)")
    return now.astimezone(datetime.UTC).replace(microsecond=0)


def timestamp(moment: datetime.datetime) -> str:
    """`2026-01-31T12:00:00Z`: how times appear in messages, status and JSON."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime.datetime:
    """The inverse of `timestamp`, for status read back from JSON."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
