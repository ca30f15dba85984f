"""`weft sidecar` as a process: files in, admin port out, reloads, rotation and drain."""

from __future__ import annotations

import json
import signal
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
    def __init__(self, tmp: Path) -> None:
        self.ca = CA.create()
        configs = sidecars.compiled(tmp / "intent", INTENT, "main@sha1:" + "a" * 40)
        self.app = sidecars.EchoServer("api")
        self.web_config = configs[("a", "web")]
        self.api_config = configs[("b", "api")]
        self.files = tmp / "sidecar"
        (self.files / "certs").mkdir(parents=True)
        self.lines: list[dict[str, Any]] = []

    def write_config(self, revision: str) -> None:
        bound = sidecars.bind_endpoints(
            {**self.web_config, "revision": revision}, {"b/api": [self.api_addr]}
        )
        (self.files / "config.json").write_text(sidecars.to_json(bound))

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
            self.files / "config.json", self.files / "certs", {"outboundHttp": "127.0.0.1:0"}
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
