"""Traces end to end: fastpath records spans, the agent exports them over OTLP, a real Jaeger
shows them.

`web` (namespace a) is the real `weft sidecar` process, exporting to the test Jaeger because
OTEL_EXPORTER_OTLP_ENDPOINT says so; `api` (namespace b) is an in-process fastpath whose
spans this test exports with the same module, so a trace shows both hops.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from reconciler.sidecar import otlp
from tests import sidecars
from tests.jaeger import Jaeger
from tests.pki import CA

TD = "traces.local"
REVISION = "main@sha1:" + "c" * 40
INTENT = {
    "mesh.yaml": f"""\
        apiVersion: weft.dev/v1alpha1
        kind: Mesh
        metadata: {{name: mesh}}
        spec:
          trustDomain: {TD}
          telemetry: {{samplingPercent: 100}}
        """,
    "services.yaml": sidecars.WEB_AND_API + "---\n" + sidecars.ALLOW_A_TO_B,
}


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


class Mesh:
    """The api sidecar in process, the web sidecar as `weft sidecar` exporting to Jaeger."""

    def __init__(self, tmp: Path, jaeger: Jaeger) -> None:
        self.jaeger = jaeger
        ca = CA.create()
        configs = sidecars.compiled(tmp / "intent", INTENT, REVISION)
        self.api_config, web_config = configs[("b", "api")], configs[("a", "web")]
        self.app = sidecars.EchoServer("api")
        self.app_thread = threading.Thread(
            target=self.app.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.app_thread.start()
        self.api = sidecars.start(
            self.api_config,
            sidecars.identity(ca, TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": self.app.addr}},
        )
        self.api_export = otlp.SpanExport(
            self.api.drain_spans,
            lambda: self.api_config,
            OTLPSpanExporter(endpoint=f"{jaeger.otlp_http}/v1/traces", timeout=5),
            interval=0.1,
        )
        self.api_export.start()

        files = tmp / "web"
        (files / "certs").mkdir(parents=True)
        bound = sidecars.bind_endpoints(web_config, {"b/api": [self.api.bound()["inbound:http"]]})
        (files / "config.json").write_text(sidecars.to_json(bound))
        web = sidecars.identity(ca, TD, "a", "web")
        for name, data in (("tls.crt", web.chain), ("tls.key", web.key), ("ca.crt", web.bundle)):
            (files / "certs" / name).write_bytes(data)
        (files / "listeners.json").write_text(json.dumps({"outboundHttp": "127.0.0.1:0"}))
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "reconciler.cli", "sidecar"),
                *("--config", str(files / "config.json"), "--certs", str(files / "certs")),
                *("--listeners", str(files / "listeners.json"), "--admin", "127.0.0.1:0"),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        wait_until(lambda: self.event("started") is not None or self.proc.poll() is not None)
        started = self.event("started")
        assert started is not None, f"web sidecar did not start: {self.lines}"
        self.outbound = started["bound"]["outbound:http"]
        self.admin = f"http://{self.event('admin')['bound']['admin']}"  # type: ignore[index]

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(json.loads(line))

    def event(self, name: str) -> dict[str, Any] | None:
        return next((entry for entry in self.lines if entry.get("event") == name), None)

    def request(self, traceparent: str | None = None) -> dict[str, Any]:
        """GET through web's outbound listener to api; what the api app received."""
        headers = {"Host": "api.b:8080"}
        if traceparent is not None:
            headers["traceparent"] = traceparent
        req = urllib.request.Request(f"http://{self.outbound}/orders/7", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            body: dict[str, Any] = json.loads(resp.read())
            return body

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.admin}/metrics", timeout=10) as resp:
            return str(resp.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=15)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.api.shutdown(0.1)
        self.api_export.stop()
        self.app.shutdown()
        self.app.server_close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("traces"), jaeger)
    try:
        yield m
    finally:
        m.stop()


def tags(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in entries}


def by_service(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each span of a Jaeger trace under its service's name (one span per service here)."""
    processes = trace["processes"]
    return {processes[s["processID"]]["serviceName"]: s for s in trace["spans"]}


def test_a_request_without_traceparent_starts_a_trace_that_shows_both_hops(mesh: Mesh) -> None:
    seen = mesh.request()["headers"]["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", seen), seen
    _, trace_id, app_parent, _ = seen.split("-")

    trace = mesh.jaeger.trace("web.a", trace_id, spans=2)
    spans = by_service(trace)
    assert set(spans) == {"web.a", "api.b"}
    client, server = spans["web.a"], spans["api.b"]
    assert client["operationName"].startswith("outbound ")
    assert server["operationName"].startswith("inbound ")
    assert tags(client["tags"])["span.kind"] == "client"
    assert tags(server["tags"])["span.kind"] == "server"
    assert client["traceID"] == server["traceID"] == trace_id
    assert client["references"] == [], "a request without traceparent starts a root span"
    assert server["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": client["spanID"]}
    ]
    assert server["spanID"] == app_parent, "the app is called with the inbound span as parent"
    for span in (client, server):
        assert tags(span["tags"])["weft.revision"] == REVISION
        assert tags(span["tags"])["http.status_code"] == 200
        process = trace["processes"][span["processID"]]
        assert tags(process["tags"])["weft.revision"] == REVISION
    assert tags(server["tags"])["weft.source"] == f"spiffe://{TD}/ns/a/sa/web"

    assert {"web.a", "api.b"} <= set(mesh.jaeger.services())
    assert trace_id in {t["traceID"] for t in mesh.jaeger.traces("api.b")}


def test_an_incoming_traceparent_is_continued(mesh: Mesh) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    seen = mesh.request(f"00-{trace_id}-{caller}-01")["headers"]["traceparent"]
    assert seen.startswith(f"00-{trace_id}-")

    spans = by_service(mesh.jaeger.trace("web.a", trace_id, spans=2))
    client, server = spans["web.a"], spans["api.b"]
    assert client["traceID"] == server["traceID"] == trace_id
    assert client["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": caller}
    ], "the caller's span is the parent of the first hop"
    assert server["references"][0]["spanID"] == client["spanID"]


def test_exported_spans_are_counted_in_the_agents_metrics(mesh: Mesh) -> None:
    mesh.request()

    def exported() -> int:
        m = re.search(r"^weft_sidecar_spans_exported_total (\d+)$", mesh.metrics(), re.M)
        return int(m.group(1)) if m else -1

    wait_until(lambda: exported() >= 1)
    assert "\nweft_sidecar_span_export_failures_total 0\n" in mesh.metrics()
    assert mesh.event("span-export") is not None


def test_jaeger_listens_only_on_loopback(jaeger: Jaeger) -> None:
    listening = subprocess.run(
        ["ss", "-H", "-l", "-n", "-p", "-t", "-u"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    mine = [line for line in listening if f"pid={jaeger.pid}," in line]
    assert len(mine) == 5, listening  # OTLP gRPC + HTTP, query HTTP + gRPC, health check
    for line in mine:
        local = line.split()[4]
        assert local.startswith("127.0.0.1:"), line


# The exporter on its own: conversion and failure counting, no collector needed.


def span(name: str, parent: str | None = "00f067aa0ba902b7", code: str = "200") -> dict[str, Any]:
    return {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "53995c3f42cd8ad8",
        "parent_span_id": parent,
        "name": name,
        "start_unix_nano": 1_700_000_000_000_000_000,
        "end_unix_nano": 1_700_000_000_002_000_000,
        "attributes": [
            ["http.status_code", code],
            ["weft.tries", "2"],
            ["weft.revision", "main@sha1:" + "d" * 40],
        ],
    }


def test_spans_convert_to_opentelemetry_with_kind_parent_and_status() -> None:
    res = otlp.resource({"service": "api", "namespace": "b"}, "rev")
    inbound = otlp.to_readable(span("inbound b/api:8080 GET", code="503"), res)
    assert inbound.kind is SpanKind.SERVER
    assert inbound.context is not None
    assert inbound.parent is not None
    assert f"{inbound.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{inbound.context.span_id:016x}" == "53995c3f42cd8ad8"
    assert f"{inbound.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert inbound.parent.is_remote
    assert inbound.status.status_code is StatusCode.ERROR
    assert inbound.attributes is not None
    assert inbound.attributes["http.status_code"] == 503
    assert inbound.attributes["weft.tries"] == 2
    assert inbound.resource.attributes["service.name"] == "api.b"
    assert inbound.resource.attributes["weft.revision"] == "rev"
    assert inbound.start_time == 1_700_000_000_000_000_000
    outbound = otlp.to_readable(span("outbound api.b:8080 GET", parent=None, code="404"), res)
    assert outbound.kind is SpanKind.CLIENT
    assert outbound.parent is None
    assert outbound.status.status_code is StatusCode.ERROR  # a client span errs on 4xx too
    served = otlp.to_readable(span("inbound b/api:8080 GET", code="404"), res)
    assert served.status.status_code is StatusCode.UNSET  # a server span only on 5xx


def test_export_to_an_unreachable_collector_counts_failures_and_goes_on() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: connections are refused
    ring = [json.dumps([span("outbound api.b:8080 GET"), {"name": "garbage"}]), "[]"]
    export = otlp.SpanExport(
        lambda _max: ring.pop(0) if ring else "[]",
        lambda: {"workload": {"service": "web", "namespace": "a"}, "revision": "r"},
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{dead}/v1/traces", timeout=1),
    )
    assert export.export_once() == 2
    assert (export.exported, export.failed) == (0, 2)  # one refused, one not understood
    assert export.export_once() == 0


def test_export_is_off_without_an_endpoint() -> None:
    def drain(_max: int) -> str:
        return "[]"

    assert otlp.from_environment(drain, dict, {}) is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert otlp.from_environment(drain, dict, on) is not None
    assert otlp.from_environment(drain, dict, {**on, "OTEL_SDK_DISABLED": "true"}) is None


def test_the_meshs_otlp_endpoint_is_used_when_the_environment_names_none(jaeger: Jaeger) -> None:
    """The Mesh's otlpEndpoint is enforced: with no OTEL_* variables, spans go there."""
    trace_id = secrets.token_hex(16)
    now = time.time_ns()
    spans = [
        {
            **span("inbound b/api:8080 GET"),
            "trace_id": trace_id,
            "start_unix_nano": now - 1_000_000,
            "end_unix_nano": now,
        }
    ]

    def drain(_max: int) -> str:
        out = json.dumps(spans)
        spans.clear()
        return out

    config = {
        "workload": {"service": "meshdefault", "namespace": "b"},
        "revision": "main@sha1:" + "e" * 40,
        "telemetry": {"samplingPercent": 100, "otlpEndpoint": jaeger.otlp_http},
    }
    export = otlp.from_environment(drain, lambda: config, {})
    assert export is not None
    assert export.export_once() == 1
    found = jaeger.trace("meshdefault.b", trace_id, spans=1)
    assert found["traceID"] == trace_id


def test_digits_int_refuses_are_kept_as_text() -> None:
    """`str.isdigit` accepts "²" and other non-ASCII digits that `int` refuses: an attribute or
    a batch setting made of them is text or the default, never an exception in the exporter."""
    res = otlp.resource({"service": "api", "namespace": "b"}, "rev")
    readable = otlp.to_readable(span("inbound b/api:8080 GET", code="²"), res)
    assert readable.attributes is not None
    assert readable.attributes["http.status_code"] == "²"

    def drain(_max: int) -> str:
        return "[]"

    odd = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_BSP_SCHEDULE_DELAY": "٣",  # an Arabic-Indic three
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "²",
    }
    export = otlp.from_environment(drain, dict, odd)
    assert export is not None
    assert (export.interval, export.batch) == (otlp.INTERVAL_SECONDS, otlp.BATCH)
