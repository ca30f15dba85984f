"""Certificate expiry as Prometheus gauges, computed from `status.Status`.

The reconciler's metrics endpoint will serve these; until then `weft ca status --metrics`
prints them for a node_exporter textfile collector. Gauges hold timestamps, not countdowns, so
an alert is `weft_certificate_expiry_timestamp_seconds - time() < 3600` and no scrape is stale.
"""

from __future__ import annotations

import dataclasses

from reconciler.identity.status import Status


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One Prometheus sample: a gauge's name, its labels and its value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


METRICS = {
    "weft_ca_expiry_timestamp_seconds": "notAfter of each CA in the trust bundle (Unix time)",
    "weft_ca_live_certificates": "stored unexpired workload certificates chaining to each CA",
    "weft_certificate_expiry_timestamp_seconds": "notAfter of each workload certificate",
    "weft_certificate_renewal_timestamp_seconds": "when each workload certificate is renewed",
}


def expiry_samples(status: Status) -> list[Sample]:
    """Certificate-expiry gauges; alert on `expiry - time() < ...` rather than on a count."""
    samples: list[Sample] = []
    for a in status.authorities:
        labels: tuple[tuple[str, str], ...] = (("ca_id", a.ca_id), ("role", str(a.role)))
        samples.append(Sample("weft_ca_expiry_timestamp_seconds", labels, a.not_after.timestamp()))
        samples.append(Sample("weft_ca_live_certificates", labels, float(a.live_certificates)))
    for w in status.workloads:
        if w.not_after is None:
            continue
        labels = (
            ("namespace", w.key.namespace),
            ("service_account", w.key.service_account),
            ("spiffe_id", w.spiffe_id or ""),
            ("issuer", w.issuer or ""),
        )
        samples.append(
            Sample("weft_certificate_expiry_timestamp_seconds", labels, w.not_after.timestamp())
        )
        if w.renew_at is not None:
            samples.append(
                Sample("weft_certificate_renewal_timestamp_seconds", labels, w.renew_at.timestamp())
            )
    return samples


def prometheus_text(samples: list[Sample]) -> str:
    """The text exposition format, grouped by metric with HELP and TYPE lines."""
    lines: list[str] = []
    for name, help_text in METRICS.items():
        rows = [s for s in samples if s.name == name]
        if not rows:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for s in rows:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
            lines.append(f"{name}{{{labels}}} {s.value:.0f}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
