"""The reconciler's own telemetry: one OpenTelemetry trace per reconcile, and Prometheus metrics.

Traces go over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (read them in Jaeger); otherwise
the OpenTelemetry API is a no-op and costs nothing. Metrics: reconcile duration histogram,
reconciles by result, errors by kind, last success time, and certificate expiry.
"""

from __future__ import annotations

import os
import threading
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

SERVICE_NAME = "weft-reconciler"
BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def tracer() -> trace.Tracer:
    return trace.get_tracer("weft.reconciler")


def configure(exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install a tracer provider exporting to `exporter`, or to OTLP when the environment says
    so. Returns it (to flush and shut down), or None when tracing stays off."""
    if exporter is None:
        if not (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ):
            return None
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


class Metrics:
    """Counters for Prometheus, updated by the loop, rendered on scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets = [0] * len(BUCKETS_S)
        self.count = 0
        self.sum = 0.0
        self.results: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.last_success: float | None = None
        self.applied_objects = 0

    def observe(
        self, seconds: float, result: str, error_kind: str | None = None, objects: int = 0
    ) -> None:
        with self._lock:
            self.count += 1
            self.sum += seconds
            for i, bound in enumerate(BUCKETS_S):
                if seconds <= bound:
                    self.buckets[i] += 1
            self.results[result] = self.results.get(result, 0) + 1
            if error_kind:
                self.errors[error_kind] = self.errors.get(error_kind, 0) + 1
            if result == "applied":
                self.last_success = time.time()
                self.applied_objects += objects

    def render(self, extra: str = "") -> str:
        with self._lock:
            lines = [
                "# TYPE weft_reconcile_duration_seconds histogram",
                *(
                    f'weft_reconcile_duration_seconds_bucket{{le="{b}"}} {n}'
                    for b, n in zip(BUCKETS_S, self.buckets, strict=True)
                ),
                f'weft_reconcile_duration_seconds_bucket{{le="+Inf"}} {self.count}',
                f"weft_reconcile_duration_seconds_sum {self.sum}",
                f"weft_reconcile_duration_seconds_count {self.count}",
                "# TYPE weft_reconciles_total counter",
                *(
                    f'weft_reconciles_total{{result="{r}"}} {n}'
                    for r, n in sorted(self.results.items())
                ),
                "# TYPE weft_reconcile_errors_total counter",
                *(
                    f'weft_reconcile_errors_total{{kind="{k}"}} {n}'
                    for k, n in sorted(self.errors.items())
                ),
                "# TYPE weft_reconcile_applied_objects_total counter",
                f"weft_reconcile_applied_objects_total {self.applied_objects}",
            ]
            if self.last_success is not None:
                lines += [
                    "# TYPE weft_reconcile_last_success_timestamp_seconds gauge",
                    f"weft_reconcile_last_success_timestamp_seconds {self.last_success}",
                ]
        return "\n".join(lines) + "\n" + extra
