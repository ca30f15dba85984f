"""A real Jaeger v2 (all-in-one, in-memory storage) for tests, as a session-scoped fixture.

The binary is built from `tools/jaeger` by `tools/jaeger/build.sh` (cached outside the
repository; the first build takes a few minutes). A test that asks for `jaeger` never skips:
a missing binary is built, and a failed build or start fails the test with the reason.
Every listener (OTLP gRPC and HTTP, the query API and its gRPC twin, the health check) is on
127.0.0.1 at a port picked at start; Jaeger's own telemetry listens nowhere.

`tests/conftest.py` registers the fixture for every test module.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tools" / "jaeger" / "build.sh"
BUILD_TIMEOUT = 20 * 60  # a cold build is about 6 minutes on 2 cores
START_TIMEOUT = 30.0

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclasses.dataclass(frozen=True)
class Jaeger:
    otlp_http: str  # base URL for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter adds /v1/traces)
    otlp_grpc: str  # host:port
    query: str  # base URL of the query API
    log: Path
    pid: int

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.query}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def services(self) -> list[str]:
        return list(self.api("/api/services")["data"] or [])

    def traces(self, service: str) -> list[dict[str, Any]]:
        return list(self.api("/api/traces", service=service, lookback="1h", limit="1000")["data"])

    def trace(
        self, service: str, trace_id: str, spans: int, timeout: float = 15.0
    ) -> dict[str, Any]:
        """The trace `trace_id` as Jaeger's query API lists it under `service`, once it holds at
        least `spans` spans (export is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [t for t in self.traces(service) if t["traceID"] == trace_id]
            if found and len(found[0]["spans"]) >= spans:
                return found[0]
            if time.monotonic() > deadline:
                have = len(found[0]["spans"]) if found else 0
                raise AssertionError(
                    f"trace {trace_id} has {have} of {spans} spans under {service!r} in Jaeger "
                    f"after {timeout} s; services: {self.services()}"
                )
            time.sleep(0.1)


def binary() -> Path:
    """Build Jaeger if it is not cached yet; its path."""
    return harness.build(BUILD, "Jaeger", BUILD_TIMEOUT)


def start(exe: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], Jaeger]:
    """Jaeger on fresh loopback ports, once it is ready."""
    query, query_grpc, health, otlp_grpc, otlp_http = harness.free_ports(5)
    config = workdir / "jaeger.yaml"
    config.write_text(
        CONFIG.format(
            query=query,
            query_grpc=query_grpc,
            health=health,
            otlp_grpc=otlp_grpc,
            otlp_http=otlp_http,
        )
    )
    log = workdir / "jaeger.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "--config", f"file:{config}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    jaeger = Jaeger(
        otlp_http=f"http://127.0.0.1:{otlp_http}",
        otlp_grpc=f"127.0.0.1:{otlp_grpc}",
        query=f"http://127.0.0.1:{query}",
        log=log,
        pid=proc.pid,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not (
        harness.http_ok(f"http://127.0.0.1:{health}/status")
        and harness.http_ok(f"{jaeger.query}/api/services")
    ):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"Jaeger did not become ready (exit {proc.poll()}):\n{tail}")
        time.sleep(0.1)
    return proc, jaeger


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    exe = binary()
    for attempt in range(3):  # a picked port can be taken between picking and binding
        try:
            proc, j = start(exe, tmp_path_factory.mktemp("jaeger"))
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield j
    finally:
        stop(proc)
