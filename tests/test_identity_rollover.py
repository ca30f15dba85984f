"""The trust-bundle rollover state machine, as tables of (state, event) -> (state, changes).

The machine is pure data, so every transition is checked without a CA, a file or a clock.
"""

from __future__ import annotations

import datetime

import pytest

from reconciler.identity import rollover
from reconciler.identity.errors import RolloverError
from reconciler.identity.rollover import Change, Role, TrustedCA, TrustState

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
MIN = datetime.timedelta(minutes=1)
TD = "test.local"


def at(minutes: float) -> datetime.datetime:
    return T0 + MIN * minutes


def state(*authorities: TrustedCA) -> TrustState:
    return TrustState(TD, authorities)


def active(ca: str, since: float = 0) -> TrustedCA:
    return TrustedCA(ca, Role.ACTIVE, at(since), MIN)


def incoming(ca: str, since: float = 0) -> TrustedCA:
    return TrustedCA(ca, Role.INCOMING, at(since), MIN)


def previous(ca: str, since: float = 0, drained: float | None = None) -> TrustedCA:
    return TrustedCA(ca, Role.PREVIOUS, at(since), MIN, None if drained is None else at(drained))


def test_start_and_rotate_trust_both_but_the_old_one_still_issues() -> None:
    s = rollover.rotate(rollover.start(TD, "A", T0), "B", at(1), MIN)
    assert s == state(TrustedCA("A", Role.ACTIVE, T0), incoming("B", 1))
    assert s.trusted == ("A", "B")
    assert s.active.ca_id == "A"
    assert s.incoming is not None
    assert s.incoming.issues_from == at(2)


@pytest.mark.parametrize(
    ("before", "now", "live", "after", "changes"),
    [
        pytest.param(state(active("A")), 5, {"A"}, state(active("A")), [], id="steady"),
        pytest.param(
            state(active("A"), incoming("B", 1)),
            1.5,
            {"A"},
            state(active("A"), incoming("B", 1)),
            [],
            id="incoming-waits-out-its-grace",
        ),
        pytest.param(
            state(active("A"), incoming("B", 1)),
            2,
            {"A"},
            state(active("B", 2), previous("A", 2)),
            [Change("promoted", "B")],
            id="promoted-after-grace-old-ca-still-trusted",
        ),
        pytest.param(
            state(active("B", 2), previous("A", 2)),
            3,
            {"A", "B"},
            state(active("B", 2), previous("A", 2)),
            [],
            id="previous-kept-while-live-certificates-chain-to-it",
        ),
        pytest.param(
            state(active("B", 2), previous("A", 2)),
            3,
            {"B"},
            state(active("B", 2), previous("A", 2, drained=3)),
            [],
            id="drained-previous-waits-its-grace",
        ),
        pytest.param(
            state(active("B", 2), previous("A", 2, drained=3)),
            4,
            {"B"},
            state(active("B", 2)),
            [Change("retired", "A")],
            id="retired-once-drained-for-the-grace",
        ),
        pytest.param(
            state(active("B", 2), previous("A", 2, drained=3)),
            3.5,
            {"A", "B"},
            state(active("B", 2), previous("A", 2)),
            [],
            id="a-live-certificate-reappearing-resets-the-drain",
        ),
        pytest.param(
            state(active("C", 9), previous("B", 9), previous("A", 2, drained=3)),
            9.5,
            {"B"},
            state(active("C", 9), previous("B", 9)),
            [Change("retired", "A")],
            id="several-previous-retire-independently",
        ),
        pytest.param(
            state(active("A"), incoming("B", 1)),
            60,
            frozenset(),
            state(active("B", 60), previous("A", 60, drained=60)),
            [Change("promoted", "B")],
            id="a-ca-with-no-certificates-still-waits-its-grace",
        ),
    ],
)
def test_advance(
    before: TrustState,
    now: float,
    live: set[str],
    after: TrustState,
    changes: list[Change],
) -> None:
    got, happened = rollover.advance(before, at(now), frozenset(live))
    assert got == after
    assert list(happened) == changes


def test_zero_grace_promotes_and_retires_in_one_step() -> None:
    s = rollover.rotate(rollover.start(TD, "A", T0), "B", at(1), datetime.timedelta(0))
    s, changes = rollover.advance(s, at(1), frozenset({"A"}))
    assert (s.active.ca_id, [c.kind for c in changes]) == ("B", ["promoted"])
    s, changes = rollover.advance(s, at(1), frozenset({"B"}))
    assert (s.trusted, [c.kind for c in changes]) == (("B",), ["retired"])


@pytest.mark.parametrize(
    ("before", "ca", "message"),
    [
        pytest.param(
            state(active("A"), incoming("B", 1)),
            "C",
            "a rollover to CA B is already under way (it issues from 2030-01-01T00:02:00+00:00); "
            "let it finish first",
            id="one-rollover-at-a-time",
        ),
        pytest.param(
            state(active("B", 2), previous("A", 2)),
            "A",
            "CA A is already in the trust bundle",
            id="no-return-to-a-trusted-ca",
        ),
        pytest.param(state(active("A")), "A", "CA A is already in the trust bundle", id="self"),
    ],
)
def test_rotate_refused(before: TrustState, ca: str, message: str) -> None:
    with pytest.raises(RolloverError) as refused:
        rollover.rotate(before, ca, at(5))
    assert str(refused.value) == message


def test_rotating_again_while_the_previous_drains_is_allowed() -> None:
    s = rollover.rotate(state(active("B", 2), previous("A", 2)), "C", at(5))
    assert s.trusted == ("B", "C", "A")


@pytest.mark.parametrize(
    "authorities",
    [
        pytest.param((), id="empty"),
        pytest.param((incoming("B"),), id="no-active"),
        pytest.param((active("A"), active("B")), id="two-active"),
        pytest.param((active("A"), incoming("B"), incoming("C")), id="two-incoming"),
    ],
)
def test_invalid_states_cannot_be_built(authorities: tuple[TrustedCA, ...]) -> None:
    with pytest.raises(ValueError, match="one active CA and at most one incoming"):
        TrustState(TD, authorities)


def test_json_round_trip() -> None:
    s = state(active("C", 9), incoming("D", 10), previous("B", 9), previous("A", 2, drained=3))
    assert TrustState.from_json(s.as_json()) == s
