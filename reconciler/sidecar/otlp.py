"""Span export: fastpath's finished request spans to an OTLP collector (Jaeger, an OTel Collector).

fastpath records one span per request hop in Rust, into a bounded ring (a full ring drops the
oldest span and counts it; a request never waits). `SpanExport` drains that ring on its own
thread, turns each span into an OpenTelemetry SDK `ReadableSpan` and sends batches with the
OTLP exporter (HTTP/protobuf). The agent's poll loop never waits on the network, and the ring,
not Python, is the only buffer: while the collector is slow, spans wait in Rust memory that is
already bounded.

Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set
and `OTEL_SDK_DISABLED` is not `true`. The exporter reads the other standard variables itself
(headers, timeout, compression, certificates).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

log = logging.getLogger("weft.sidecar.otlp")

SCOPE = InstrumentationScope("weft.fastpath")
BATCH = 512
INTERVAL_SECONDS = 1.0
# Span attributes that fastpath sends as text but that OpenTelemetry defines as integers.
INT_ATTRIBUTES = frozenset({"http.status_code", "weft.tries"})


def _decimal(text: str) -> bool:
    """Only ASCII digits: `str.isdigit` also accepts "²" and other digits `int` refuses."""
    return text.isascii() and text.isdigit()


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return any(environ.get(name) for name in endpoints)


def service_name(workload: Mapping[str, Any]) -> str:
    """`<service>.<namespace>`, the name a trace viewer lists this workload under."""
    return f"{workload.get('service', 'unknown')}.{workload.get('namespace', 'unknown')}"


def resource(workload: Mapping[str, Any], revision: str) -> Resource:
    return Resource.create(
        {
            "service.name": service_name(workload),
            "service.namespace": str(workload.get("namespace", "unknown")),
            "weft.revision": revision,
        }
    )


def _kind(name: str) -> SpanKind:
    if name.startswith("inbound"):
        return SpanKind.SERVER
    if name.startswith("outbound"):
        return SpanKind.CLIENT
    return SpanKind.INTERNAL


def _status(kind: SpanKind, attributes: Mapping[str, Any]) -> Status:
    """OpenTelemetry's HTTP rule: a server span errs on 5xx, a client span on 4xx too."""
    code = attributes.get("http.status_code")
    if isinstance(code, int) and (code >= 500 or (kind is SpanKind.CLIENT and code >= 400)):
        return Status(StatusCode.ERROR)
    return Status(StatusCode.UNSET)


def to_readable(span: Mapping[str, Any], res: Resource) -> ReadableSpan:
    """One drained fastpath span (hex IDs, Unix nanoseconds, attributes as [key, value] pairs)."""
    sampled = TraceFlags(TraceFlags.SAMPLED)
    trace_id = int(span["trace_id"], 16)
    context = SpanContext(trace_id, int(span["span_id"], 16), is_remote=False, trace_flags=sampled)
    parent = None
    if span.get("parent_span_id"):
        parent = SpanContext(
            trace_id, int(span["parent_span_id"], 16), is_remote=True, trace_flags=sampled
        )
    attributes: dict[str, str | int] = {}
    for key, value in span.get("attributes", []):
        attributes[key] = int(value) if key in INT_ATTRIBUTES and _decimal(value) else value
    kind = _kind(span["name"])
    return ReadableSpan(
        name=span["name"],
        context=context,
        parent=parent,
        resource=res,
        attributes=attributes,
        kind=kind,
        status=_status(kind, attributes),
        start_time=int(span["start_unix_nano"]),
        end_time=int(span["end_unix_nano"]),
        instrumentation_scope=SCOPE,
    )


class SpanExport:
    """Drains spans from `drain` (a fastpath `Proxy.drain_spans`) and exports them.

    `config` returns the ProxyConfig in force (it changes on reload): its workload names the
    service, and its revision labels spans that do not carry their own `weft.revision`.
    `exported` and `failed` count spans, for the agent's metrics.
    """

    def __init__(
        self,
        drain: Callable[[int], str],
        config: Callable[[], Mapping[str, Any]],
        exporter: SpanExporter,
        *,
        batch: int = BATCH,
        interval: float = INTERVAL_SECONDS,
    ) -> None:
        self._drain, self._config, self._exporter = drain, config, exporter
        self.batch, self.interval = batch, interval
        self.exported = self.failed = 0
        self._resources: dict[tuple[str, str, str], Resource] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def _resource(self, revision: str) -> Resource:
        workload = self._config().get("workload", {})
        key = (str(workload.get("service")), str(workload.get("namespace")), revision)
        if key not in self._resources:
            if len(self._resources) > 64:  # revisions come and go; keep the cache small
                self._resources.clear()
            self._resources[key] = resource(workload, revision)
        return self._resources[key]

    def _convert(self, drained: Sequence[Mapping[str, Any]]) -> list[ReadableSpan]:
        default_revision = str(self._config().get("revision", "unknown"))
        spans = []
        for span in drained:
            revision = next(
                (v for k, v in span.get("attributes", []) if k == "weft.revision"),
                default_revision,
            )
            try:
                spans.append(to_readable(span, self._resource(revision)))
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                self.failed += 1
                log.warning(f"span skipped, not understood: {e!r}")
        return spans

    def export_once(self) -> int:
        """Drain up to one batch and export it; the number of spans drained."""
        drained = json.loads(self._drain(self.batch))
        if not drained:
            return 0
        spans = self._convert(drained)
        if spans:
            try:
                result = self._exporter.export(spans)
            except Exception as e:  # an exporter bug must not end the export thread
                log.warning(f"span export raised: {e!r}")
                result = SpanExportResult.FAILURE
            if result is SpanExportResult.SUCCESS:
                self.exported += len(spans)
                if self._failing:
                    log.info("span export recovered")
                self._failing = False
            else:
                self.failed += len(spans)
                if not self._failing:  # once per outage, not once per batch
                    log.warning(f"span export failed; {len(spans)} spans lost")
                self._failing = True
        return len(drained)

    def flush(self) -> None:
        """Export until the ring is empty (bounded: spans that arrive meanwhile may remain)."""
        for _ in range(64):
            if self.export_once() < self.batch:
                return

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                full = self.export_once() >= self.batch
            except Exception as e:  # a draining or conversion bug must not end export
                log.warning(f"span export loop: {e!r}")
                full = False
            if not full:
                self._stop.wait(self.interval)
        self.flush()
        self._exporter.shutdown()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="weft-span-export", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Export what is left and stop, waiting at most `timeout` seconds for a slow collector
        (the thread is a daemon: a process that exits does not wait for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def from_environment(
    drain: Callable[[int], str],
    config: Callable[[], Mapping[str, Any]],
    environ: Mapping[str, str] = os.environ,
) -> SpanExport | None:
    """A `SpanExport` to the OTLP/HTTP endpoint the environment names or, failing that, the one
    the Mesh names (`spec.telemetry.otlpEndpoint`, carried in the ProxyConfig); None when
    neither does or `OTEL_SDK_DISABLED=true`."""
    mesh_endpoint = config().get("telemetry", {}).get("otlpEndpoint")
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not enabled(environ) and not mesh_endpoint:
        return None
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        log.warning(f"OTLP protocol {protocol!r} is not supported; exporting with http/protobuf")
    delay_ms = environ.get("OTEL_BSP_SCHEDULE_DELAY", "")
    interval = int(delay_ms) / 1000 if _decimal(delay_ms) else INTERVAL_SECONDS
    size = environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "")
    batch = int(size) if _decimal(size) and int(size) > 0 else BATCH
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or str(mesh_endpoint)
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        base.rstrip("/") + "/v1/traces"
    )
    exporter = OTLPSpanExporter(endpoint=endpoint)
    # The exporter warns on every retry of every batch; while a collector is down that is a line
    # a second. Its final error per batch stays, and `SpanExport` says when an outage starts.
    logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.ERROR)
    return SpanExport(drain, config, exporter, batch=batch, interval=interval)
