"""HTTP egress treated as a mesh hop: the ExternalService port's timeout and retries, a span
in a real Jaeger, an access log line, and Istio's series (body sizes included).

The "outside" servers are plain HTTP servers on loopback; an ExternalService without TLS
origination is reached on the port the app dialed. b/api calls them through its sidecar's
outbound listener with a `Host` naming the external host, as an app does.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from reconciler import _native
from reconciler.sidecar import metrics, otlp
from tests import sidecars
from tests.jaeger import Jaeger
from tests.pki import CA
from tests.test_sidecar_istio import samples

TD = "egresshttp.local"
REVISION = "main@sha1:" + "e" * 40


class FailsFirst(sidecars.EchoHandler):
    """Answers the first request 503 (a flaky outside server), every later one as EchoHandler."""

    def _answer(self) -> None:
        if self.server.hits == 0:
            self.server.hits += 1
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        super()._answer()

    do_GET = do_POST = _answer  # noqa: N815  # http.server's names


def intent(slow: int, flaky: int) -> dict[str, str]:
    return {
        "mesh.yaml": sidecars.mesh_yaml(TD, telemetry="{samplingPercent: 100}"),
        "services.yaml": sidecars.WEB_AND_API,
        "external.yaml": f"""\
            apiVersion: weft.dev/v1alpha1
            kind: ExternalService
            metadata: {{name: slow, namespace: b}}
            spec:
              host: localhost
              ports: [{{port: {slow}, protocol: http, timeout: 300ms}}]
              allowedFrom: [{{services: [api]}}]
            ---
            apiVersion: weft.dev/v1alpha1
            kind: ExternalService
            metadata: {{name: flaky, namespace: b}}
            spec:
              host: localhost
              ports:
                - port: {flaky}
                  protocol: http
                  timeout: 5s
                  retries: {{attempts: 2, perTryTimeout: 2s, retryOn: [5xx]}}
              allowedFrom: [{{services: [api]}}]
            """,
    }


class Egress:
    def __init__(self, tmp: Path) -> None:
        self.slow = sidecars.EchoServer("slow")
        self.flaky = sidecars.EchoServer("flaky")
        self.flaky.RequestHandlerClass = FailsFirst
        configs = sidecars.compiled(
            tmp / "intent",
            intent(self.slow.server_address[1], self.flaky.server_address[1]),
            REVISION,
        )
        self.config = configs[("b", "api")]
        ca = CA.create()
        self.proxy: _native.Proxy = sidecars.start(
            self.config, sidecars.identity(ca, TD, "b", "api"), {"outboundHttp": "127.0.0.1:0"}
        )
        self.outbound = self.proxy.bound()["outbound:http"]

    def call(self, port: int, path: str, *headers: str) -> tuple[int, str, float]:
        started = time.monotonic()
        done = subprocess.run(
            [
                *("curl", "-sS", "--max-time", "10", "-H", f"Host: localhost:{port}"),
                *(arg for h in headers for arg in ("-H", h)),
                *("-w", "|||%{http_code}", f"http://{self.outbound}{path}"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        body, _, code = done.stdout.rpartition("|||")
        return int(code or 0), body, time.monotonic() - started

    def metrics(self) -> str:
        return metrics.render(self.proxy.stats(), self.config)

    def access(self) -> list[dict[str, Any]]:
        return list(json.loads(self.proxy.drain_access_log()))


@pytest.fixture
def egress(tmp_path: Path) -> Iterator[Egress]:
    e = Egress(tmp_path)
    with sidecars.serving(e.slow), sidecars.serving(e.flaky):
        try:
            yield e
        finally:
            e.proxy.shutdown(0.1)


def test_http_egress_answers_504_after_the_ports_timeout(egress: Egress) -> None:
    port = egress.slow.server_address[1]
    code, body, took = egress.call(port, "/sleep/3000")
    assert code == 504, body
    assert "external service b/slow" in body
    assert "timed out" in body
    assert 0.25 < took < 2.0, f"answered after {took:.2f} s; the timeout is 300 ms"
    text = egress.metrics()
    [(labels, count)] = samples(text, "istio_requests_total")
    assert (labels["response_code"], labels["weft_decided_by"], count) == (
        "504",
        "egress:b/slow",
        1,
    )
    assert labels["destination_service"] == "localhost"
    assert labels["response_flags"] == "UT", "Envoy's flag for a route timeout"
    [line] = egress.access()
    assert (line["status"], line["decided_by"], line["path"]) == (
        504,
        "egress:b/slow",
        "/sleep/3000",
    )
    assert line["destination"] == f"b/slow:{port}"
    assert line["response_flags"] == "UT"
    assert 250 < line["duration_ms"] < 2000


def test_http_egress_retries_a_failed_attempt_and_counts_it_once(egress: Egress) -> None:
    port = egress.flaky.server_address[1]
    code, body, _ = egress.call(port, "/charge")
    assert code == 200, body
    assert json.loads(body)["service"] == "flaky"
    assert egress.flaky.hits == 2, "the 503 was retried once"
    text = egress.metrics()
    [(labels, count)] = samples(text, "istio_requests_total")
    assert (labels["response_code"], labels["weft_decided_by"], count) == (
        "200",
        "egress:b/flaky",
        1,
    )
    [line] = egress.access()
    assert (line["status"], line["decided_by"], line["method"]) == (200, "egress:b/flaky", "GET")
    # the exchange's body sizes are counted like a mesh hop's
    sidecars.wait_until(lambda: samples(egress.metrics(), "istio_response_bytes_count"))
    [(_, size)] = samples(egress.metrics(), "istio_response_bytes_sum")
    assert size == len(body)


def test_a_post_through_egress_is_retried_with_its_body_and_sized(egress: Egress) -> None:
    port = egress.flaky.server_address[1]
    done = subprocess.run(
        [
            *("curl", "-sS", "--max-time", "10", "-H", f"Host: localhost:{port}"),
            *("--data-binary", "@-", f"http://{egress.outbound}/upload"),
        ],
        input="y" * 10_000,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout)["received"] == 10_000, "the retry resent the whole body"
    assert egress.flaky.hits == 2
    sidecars.wait_until(lambda: samples(egress.metrics(), "istio_request_bytes_count"))
    text = egress.metrics()
    buckets = {b["le"]: n for b, n in samples(text, "istio_request_bytes_bucket")}
    assert (buckets["1000"], buckets["10000"], buckets["+Inf"]) == (0, 1, 1)
    assert [n for _, n in samples(text, "istio_request_bytes_sum")] == [10_000]


def test_http_egress_is_a_span_in_jaeger_whose_context_reaches_the_outside(
    egress: Egress, jaeger: Jaeger
) -> None:
    export = otlp.SpanExport(
        egress.proxy.drain_spans,
        lambda: egress.config,
        OTLPSpanExporter(endpoint=f"{jaeger.otlp_http}/v1/traces", timeout=5),
        interval=0.1,
    )
    export.start()
    try:
        port = egress.flaky.server_address[1]
        trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
        code, body, _ = egress.call(port, "/charge", f"traceparent: 00-{trace_id}-{caller}-01")
        assert code == 200
        seen = json.loads(body)["headers"]["traceparent"]
        trace = jaeger.trace("api.b", trace_id, spans=1)
    finally:
        export.stop()
    [span] = trace["spans"]
    assert span["operationName"] == f"outbound b/flaky:{port} GET"
    assert span["references"] == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": caller}]
    assert seen == f"00-{trace_id}-{span['spanID']}-01", "the outside server sees the span"
    tags = {t["key"]: t["value"] for t in span["tags"]}
    assert tags["span.kind"] == "client"
    assert tags["weft.route"] == "egress:b/flaky"
    assert tags["weft.cluster"] == f"egress:localhost:{port}"
    assert tags["weft.tries"] == 2
    assert tags["http.status_code"] == 200
    assert tags["weft.revision"] == REVISION
