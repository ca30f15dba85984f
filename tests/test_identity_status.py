"""Status as data: warnings, expiry, and the Prometheus gauges made from it."""

from __future__ import annotations

import datetime

import pytest

from reconciler import identity
from reconciler.identity import metrics, status
from reconciler.identity.metrics import Sample
from reconciler.identity.rollover import Role
from reconciler.identity.status import CAStatus, Status, WorkloadStatus

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def snapshot(not_after: datetime.datetime, ca_not_after: datetime.datetime) -> Status:
    return Status(
        "/state/identity",
        "test.local",
        (CAStatus("ca1", Role.ACTIVE, "CN=root", 0xAB, ca_not_after, None, 1),),
        (
            WorkloadStatus(
                identity.WorkloadKey("a", "web"),
                "spiffe://test.local/ns/a/sa/web",
                "ca1",
                0xCD,
                not_after - 24 * HOUR,
                not_after,
                not_after - 12 * HOUR,
                None,
            ),
        ),
    )


def test_expiry_samples() -> None:
    s = snapshot(T0 + 24 * HOUR, T0 + 3650 * 24 * HOUR)
    samples = metrics.expiry_samples(s)
    labels = (
        ("namespace", "a"),
        ("service_account", "web"),
        ("spiffe_id", "spiffe://test.local/ns/a/sa/web"),
        ("issuer", "ca1"),
    )
    assert (
        Sample("weft_certificate_expiry_timestamp_seconds", labels, (T0 + 24 * HOUR).timestamp())
        in samples
    )
    assert (
        Sample("weft_ca_live_certificates", (("ca_id", "ca1"), ("role", "active")), 1.0) in samples
    )
    text = metrics.prometheus_text(samples)
    assert text.count("# TYPE ") == 4
    ca_expiry = int((T0 + 3650 * 24 * HOUR).timestamp())
    assert f'weft_ca_expiry_timestamp_seconds{{ca_id="ca1",role="active"}} {ca_expiry}\n' in text


def test_label_values_are_escaped() -> None:
    text = metrics.prometheus_text([Sample("weft_ca_live_certificates", (("ca_id", 'a"b\\c'),), 1)])
    assert 'ca_id="a\\"b\\\\c"' in text


@pytest.mark.parametrize(
    ("now", "warnings"),
    [
        pytest.param(T0, [], id="healthy"),
        pytest.param(
            T0 + 13 * HOUR,
            ["spiffe://test.local/ns/a/sa/web: renewal overdue since 2030-01-01T12:00:00Z"],
            id="renewal-overdue",
        ),
        pytest.param(
            T0 + 20 * HOUR,
            ["spiffe://test.local/ns/a/sa/web expires at 2030-01-02T00:00:00Z (in 4h00m)"],
            id="expiring",
        ),
        pytest.param(
            T0 + 25 * HOUR,
            ["spiffe://test.local/ns/a/sa/web expired at 2030-01-02T00:00:00Z"],
            id="expired",
        ),
        pytest.param(
            T0 - 25 * HOUR,
            ["spiffe://test.local/ns/a/sa/web is not valid until 2030-01-01T00:00:00Z"],
            id="clock-behind",
        ),
    ],
)
def test_workload_warnings(now: datetime.datetime, warnings: list[str]) -> None:
    s = snapshot(T0 + 24 * HOUR, T0 + 3650 * 24 * HOUR)
    assert status.warnings(s, now, status.DEFAULT_WARN_BEFORE) == warnings


def test_a_ca_is_warned_about_a_month_ahead() -> None:
    s = snapshot(T0 + 24 * HOUR, T0 + 20 * 24 * HOUR)
    assert status.warnings(s, T0, status.DEFAULT_WARN_BEFORE) == [
        "CA ca1 expires at 2030-01-21T00:00:00Z (in 20d0h); start a rollover with `weft ca rotate`"
    ]
    assert status.expired(s, T0 + 21 * 24 * HOUR) == [
        "CA ca1",
        "spiffe://test.local/ns/a/sa/web",
    ]


def test_next_renewal_is_the_earliest_renewal_time() -> None:
    s = snapshot(T0 + 24 * HOUR, T0 + 3650 * 24 * HOUR)
    assert status.next_renewal(s) == T0 + 12 * HOUR
    assert status.next_renewal(Status("/s", "test.local", s.authorities, ())) is None


def test_findings_name_their_subject_and_concern() -> None:
    s = snapshot(T0 + 24 * HOUR, T0 + 20 * 24 * HOUR)
    found = status.findings(s, T0 + 25 * HOUR, status.DEFAULT_WARN_BEFORE)
    assert [(f.subject, f.concern) for f in found] == [
        ("CA ca1", status.Concern.EXPIRING),
        ("spiffe://test.local/ns/a/sa/web", status.Concern.EXPIRED),
    ]
    assert [f.message for f in found] == status.warnings(
        s, T0 + 25 * HOUR, status.DEFAULT_WARN_BEFORE
    )


def test_json_reads_back_to_the_same_facts() -> None:
    s = snapshot(T0 + 24 * HOUR, T0 + 3650 * 24 * HOUR)
    data = status.as_json(s, T0, status.DEFAULT_WARN_BEFORE)
    assert status.from_json(data) == s
