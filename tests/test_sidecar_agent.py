"""`weft sidecar` as a process: files in, admin port out, reloads, rotation and drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.identity import atomic
from tests import sidecars
from tests.pki import CA

TD = "agent.local"
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD),
    "services.yaml": sidecars.WEB_AND_API,
    "policies.yaml": sidecars.ALLOW_A_TO_B,
}


def get(url: str) -> tuple[int, str]:
    return sidecars.http_get(url)


wait_until = sidecars.wait_until


class Sidecar:
    def __init__(self, tmp: Path, poll: float | None = None) -> None:
        self.poll = poll
        self.ca = CA.create()
        configs = sidecars.compiled(tmp / "intent", INTENT, "main@sha1:" + "a" * 40)
        self.app = sidecars.EchoServer("api")
        self.web_config = configs[("a", "web")]
        self.api_config = configs[("b", "api")]
        self.files = tmp / "sidecar"
        (self.files / "certs").mkdir(parents=True)
        self.config_path = self.files / "config.json"
        self.lines: list[dict[str, Any]] = []

    def config_text(self, revision: str) -> str:
        bound = sidecars.bind_endpoints(
            {**self.web_config, "revision": revision}, {"b/api": [self.api_addr]}
        )
        return sidecars.to_json(bound)

    def write_config(self, revision: str) -> None:
        self.config_path.write_text(self.config_text(revision))

    def replace_config(self, text: str) -> None:
        """As the local target writes it: a temporary file renamed over the old one."""
        temp = self.config_path.with_name(".config.json.tmp")
        temp.write_text(text)
        os.replace(temp, self.config_path)

    def write_certs(self, chain: bytes, key: bytes, bundle: bytes) -> None:
        for name, data in (("tls.crt", chain), ("tls.key", key), ("ca.crt", bundle)):
            (self.files / "certs" / name).write_bytes(data)

    def start(self) -> None:
        self.api = sidecars.start(
            self.api_config,
            sidecars.identity(self.ca, TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": self.app.addr}},
        )
        self.api_addr = self.api.bound()["inbound:http"]
        self.write_config("main@sha1:" + "a" * 40)
        web = sidecars.identity(self.ca, TD, "a", "web")
        self.write_certs(web.chain, web.key, web.bundle)
        self.agent = sidecars.AgentProcess(
            self.config_path,
            self.files / "certs",
            {"outboundHttp": "127.0.0.1:0"},
            poll=self.poll,
        ).start()
        self.proc, self.lines, self.admin = self.agent.proc, self.agent.lines, self.agent.admin
        self.outbound = self.agent.bound["outbound:http"]

    def event(self, name: str) -> dict[str, Any] | None:
        return self.agent.event(name)

    def request(self, path: str = "/hello") -> int:
        req = urllib.request.Request(
            f"http://{self.outbound}{path}", headers={"Host": "api.b:8080"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return e.code

    def dump(self) -> dict[str, Any]:
        return self.agent.dump()

    def stop(self) -> None:
        self.agent.stop()
        self.api.shutdown(0.1)


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    s = Sidecar(tmp_path)
    with sidecars.serving(s.app):
        s.start()
        try:
            yield s
        finally:
            s.stop()


# The agent's own poll, set far beyond any test's waits: what these see, inotify delivered.
NEVER = 600.0


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Sidecar]:
    s = Sidecar(tmp_path, poll=NEVER)
    with sidecars.serving(s.app):
        s.start()
        try:
            yield s
        finally:
            s.stop()


def test_ready_serves_and_reports_istio_metrics(sidecar: Sidecar) -> None:
    assert get(f"{sidecar.admin}/ready") == (200, "ready\n")
    assert get(f"{sidecar.admin}/live")[0] == 200
    assert sidecar.request() == 200
    _, text = get(f"{sidecar.admin}/metrics")
    line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{"))
    assert 'reporter="source"' in line
    assert f'source_principal="spiffe://{TD}/ns/a/sa/web"' in line
    assert 'destination_service_name="api"' in line
    assert 'destination_service_namespace="b"' in line
    assert 'response_code="200"' in line
    assert line.endswith(" 1")
    assert "istio_request_duration_milliseconds_bucket{" in text
    assert 'weft_sidecar_config_info{revision="main@sha1:' + "a" * 40 + '"} 1' in text


def test_every_request_gets_a_json_access_log_line(sidecar: Sidecar) -> None:
    assert sidecar.request("/orders?id=7") == 200
    wait_until(lambda: sidecar.event("access") is not None)
    entry = sidecar.event("access")
    assert entry is not None
    assert {
        k: entry[k] for k in ("direction", "source", "destination", "method", "path", "status")
    } == {
        "direction": "outbound",
        "source": f"spiffe://{TD}/ns/a/sa/web",
        "destination": "b/api:8080",
        "method": "GET",
        "path": "/orders?id=7",
        "status": 200,
    }
    assert entry["decided_by"] == "default"
    assert len(entry["trace_id"]) == 32
    assert entry["revision"] == "main@sha1:" + "a" * 40


def test_a_bad_config_is_refused_and_a_good_one_applied(sidecar: Sidecar) -> None:
    (sidecar.files / "config.json").write_text(
        '{"schemaVersion": "weft.dev/proxyconfig/v1", "oops": 1}'
    )
    wait_until(lambda: sidecar.dump()["reloads"]["rejected"] == 1)
    dump = sidecar.dump()
    assert dump["revision"] == "main@sha1:" + "a" * 40
    assert "config refused, previous one stays" in dump["lastError"]
    assert sidecar.request() == 200
    sidecar.write_config("main@sha1:" + "b" * 40)
    wait_until(lambda: sidecar.dump()["revision"] == "main@sha1:" + "b" * 40)
    assert sidecar.dump()["reloads"] == {"applied": 1, "rejected": 1}
    assert sidecar.request() == 200


def test_certificates_rotate_from_files_and_garbage_is_refused(sidecar: Sidecar) -> None:
    fresh = sidecars.identity(sidecar.ca, TD, "a", "web")
    sidecar.write_certs(fresh.chain, fresh.key, fresh.bundle)
    wait_until(lambda: sidecar.dump()["rotations"]["applied"] == 1)
    assert sidecar.request() == 200
    sidecar.write_certs(b"not a certificate", fresh.key, fresh.bundle)
    wait_until(lambda: sidecar.dump()["rotations"]["rejected"] == 1)
    assert sidecar.request() == 200
    assert fresh.key.decode() not in "".join(json.dumps(x) for x in sidecar.lines), (
        "keys never logged"
    )


def test_sigterm_drains_in_flight_requests_then_exits(sidecar: Sidecar) -> None:
    result: list[int] = []
    slow = threading.Thread(target=lambda: result.append(sidecar.request("/sleep/800")))
    slow.start()
    time.sleep(0.2)  # the request is now in flight: the app sleeps 800 ms before answering
    sidecar.proc.send_signal(signal.SIGTERM)
    slow.join()
    assert result == [200]
    assert sidecar.proc.wait(timeout=10) == 0
    assert sidecar.event("draining") is not None
    assert sidecar.event("stopped") is not None


def test_a_sidecar_that_cannot_start_exits_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / "certs" / name).write_text("junk")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "listeners.json").write_text("{}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "sidecar",
            "--config",
            str(tmp_path / "config.json"),
            "--certs",
            str(tmp_path / "certs"),
            "--listeners",
            str(tmp_path / "listeners.json"),
            "--admin",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert any("cannot start" in json.loads(x)["message"] for x in done.stdout.splitlines())


def test_a_changed_config_is_applied_without_waiting_for_the_poll(watched: Sidecar) -> None:
    assert watched.event("watch-unavailable") is None
    started = time.monotonic()
    watched.replace_config(watched.config_text("main@sha1:" + "b" * 40))
    wait_until(lambda: watched.dump()["revision"] == "main@sha1:" + "b" * 40)
    watched.write_config("main@sha1:" + "c" * 40)  # written in place: seen once it is closed
    wait_until(lambda: watched.dump()["revision"] == "main@sha1:" + "c" * 40)
    assert time.monotonic() - started < NEVER
    assert watched.dump()["reloads"] == {"applied": 2, "rejected": 0}
    assert watched.request() == 200


def test_a_bad_config_seen_at_once_is_refused_and_the_old_stays(watched: Sidecar) -> None:
    watched.replace_config('{"schemaVersion": "weft.dev/proxyconfig/v1", "oops": 1}')
    wait_until(lambda: watched.dump()["reloads"]["rejected"] == 1)
    dump = watched.dump()
    assert dump["revision"] == "main@sha1:" + "a" * 40
    assert "config refused, previous one stays" in dump["lastError"]
    assert watched.request() == 200
    # A temporary file of the writer's, whatever it holds, is not the config.
    (watched.files / ".config.json.tmp").write_text("garbage")
    watched.replace_config(watched.config_text("main@sha1:" + "d" * 40))
    wait_until(lambda: watched.dump()["revision"] == "main@sha1:" + "d" * 40)
    assert watched.dump()["reloads"] == {"applied": 1, "rejected": 1}


def test_certificates_published_through_data_rotate_at_once(watched: Sidecar) -> None:
    certs = watched.files / "certs"
    fresh = sidecars.identity(watched.ca, TD, "a", "web")
    # As identity and Kubernetes publish them: a new version directory, then `..data` swapped.
    atomic.write_directory(
        certs,
        {
            "tls.crt": (fresh.chain, 0o644),
            "tls.key": (fresh.key, 0o600),
            "ca.crt": (fresh.bundle, 0o644),
        },
    )
    wait_until(lambda: watched.dump()["rotations"]["applied"] == 1)
    assert watched.request() == 200
    other = sidecars.identity(watched.ca, TD, "a", "web")
    atomic.write_directory(
        certs,
        {
            "tls.crt": (other.chain, 0o644),
            "tls.key": (fresh.key, 0o600),
            "ca.crt": (other.bundle, 0o644),
        },
    )  # a certificate with someone else's key: refused whole
    wait_until(lambda: watched.dump()["rotations"]["rejected"] == 1)
    assert watched.request() == 200
    assert watched.dump()["rotations"]["applied"] == 1


def test_files_written_one_by_one_are_rotated_once(watched: Sidecar) -> None:
    fresh = sidecars.identity(watched.ca, TD, "a", "web")
    watched.write_certs(fresh.chain, fresh.key, fresh.bundle)  # three writes in place
    wait_until(lambda: watched.dump()["rotations"]["applied"] == 1)
    time.sleep(0.3)
    assert watched.dump()["rotations"] == {"applied": 1, "rejected": 0}


def test_the_poll_still_finds_what_inotify_cannot_see(tmp_path: Path) -> None:
    # The config's folder is reached through a symlink; the watch is on the folder it named
    # at start, so swapping the symlink to another folder is invisible to inotify.
    s = Sidecar(tmp_path, poll=0.3)
    first, second = s.files / "v1", s.files / "v2"
    first.mkdir()
    second.mkdir()
    (s.files / "live").symlink_to("v1")
    s.config_path = s.files / "live" / "config.json"
    with sidecars.serving(s.app):
        s.start()
        try:
            (second / "config.json").write_text(s.config_text("main@sha1:" + "e" * 40))
            temp = s.files / "live.tmp"
            temp.symlink_to("v2")
            os.replace(temp, s.files / "live")
            wait_until(lambda: s.dump()["revision"] == "main@sha1:" + "e" * 40)
        finally:
            s.stop()


def test_resilience_shows_in_metrics_access_log_and_clusters(sidecar: Sidecar) -> None:
    config = json.loads(sidecar.config_text("main@sha1:" + "c" * 40))
    config["outbound"]["http"][0]["routes"][-1]["fault"] = {
        "abort": {"httpStatus": 503, "percent": 100}
    }
    config["outbound"]["clusters"][0]["outlierDetection"] = {
        "consecutive5xx": 5,
        "intervalMs": 10000,
        "baseEjectionTimeMs": 30000,
        "maxEjectionTimeMs": 300000,
        "maxEjectionPercent": 10,
        "panicThresholdPercent": 0,
    }
    sidecar.replace_config(json.dumps(config))
    wait_until(lambda: sidecar.dump()["revision"] == "main@sha1:" + "c" * 40)
    assert sidecar.request() == 503
    _, text = get(f"{sidecar.admin}/metrics")
    line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{"))
    assert 'response_code="503"' in line
    assert 'response_flags="FI"' in line
    assert 'weft_outlier_ejected{cluster="b/api:8080"} 0' in text
    wait_until(lambda: sidecar.event("access") is not None)
    entry = sidecar.event("access")
    assert entry is not None
    assert (entry["status"], entry["response_flags"]) == (503, "FI")
    status, body = get(f"{sidecar.admin}/clusters")
    assert status == 200
    (cluster,) = json.loads(body)["clusters"]
    assert cluster["name"] == "b/api:8080"
    assert cluster["endpoints"] == [
        {
            "address": sidecar.api_addr,
            "in_flight": 0,
            "ejected": False,
            "ejected_for_ms": None,
            "ejections": 0,
        }
    ]
    assert cluster["outlier_detection"] == {"ejected_now": 0, "ejections_total": []}
    assert sidecar.app.hits == 0, "the abort never reached the app"


def test_an_agent_without_a_span_exporter_keeps_no_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampled requests still carry the sampled flag on, but the agent that exports nowhere has
    fastpath keep none of its own spans: an unread ring only grew the sidecar's memory."""
    from reconciler.sidecar.agent import Agent  # noqa: PLC0415

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    s = Sidecar(tmp_path)
    with sidecars.serving(s.app):
        s.api = sidecars.start(
            s.api_config,
            sidecars.identity(s.ca, TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": s.app.addr}},
        )
        s.api_addr = s.api.bound()["inbound:http"]
        s.write_config("main@sha1:" + "a" * 40)
        web = sidecars.identity(s.ca, TD, "a", "web")
        s.write_certs(web.chain, web.key, web.bundle)
        listeners = s.files / "listeners.json"
        listeners.write_text(json.dumps({"outboundHttp": "127.0.0.1:0"}))
        agent = Agent(s.config_path, s.files / "certs", listeners)
        agent.start()
        assert agent.proxy is not None
        assert agent.spans is None
        try:
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
            for _ in range(20):
                req = urllib.request.Request(
                    f"http://{agent.proxy.bound()['outbound:http']}/hello",
                    headers={
                        "Host": "api.b:8080",
                        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                    },
                )
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.status == 200
            assert json.loads(agent.proxy.drain_spans()) == []
            # The next hop, whose spans are read, got the trace sampled and kept its spans.
            spans = json.loads(s.api.drain_spans())
            assert len(spans) == 20
            assert {sp["trace_id"] for sp in spans} == {trace_id}

            # A reload whose Mesh names a collector starts export and recording: the spans are
            # drained and sent (here to a closed port, so they count as failed).
            with socket.socket() as closed:
                closed.bind(("127.0.0.1", 0))
                dead = closed.getsockname()[1]
            config = json.loads(s.config_text("main@sha1:" + "b" * 40))
            config["telemetry"] = {
                **config.get("telemetry", {}),
                "samplingPercent": 100,
                "otlpEndpoint": f"http://127.0.0.1:{dead}",
            }
            s.replace_config(json.dumps(config))
            agent.poll()
            assert agent.spans is not None
            url = f"http://{agent.proxy.bound()['outbound:http']}/hello"
            assert sidecars.http_get(url, "api.b:8080")[0] == 200
            wait_until(lambda: agent.spans is not None and agent.spans.failed >= 1, timeout=30)
        finally:
            if agent.spans is not None:
                agent.spans.stop()
            agent.proxy.shutdown(0.1)
            s.api.shutdown(0.1)
