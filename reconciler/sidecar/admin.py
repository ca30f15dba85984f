"""The sidecar's admin port: /ready, /live, /metrics, /config_dump, /clusters and the app's own
probes (/app-health/<container>/<kind>, see `probes`).

`/ready` answers 200 only once every listener is bound and certificates are loaded (and 503 again
while draining), so a pod can hold its app until the proxy is ready.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any, Protocol

from reconciler import hostport
from reconciler.sidecar.probes import PATH as APP_HEALTH


class Admin(Protocol):
    """What the admin port asks of the sidecar; the agent is one, a test may be another."""

    @property
    def ready(self) -> bool:
        """Every listener bound and certificates loaded, and not draining."""

    @property
    def serving(self) -> bool:
        """fastpath has started, so there are metrics and a config to show."""

    def metrics(self) -> str:
        """The Prometheus text of /metrics."""

    def config_dump(self) -> dict[str, Any]:
        """The JSON of /config_dump."""

    def clusters(self) -> dict[str, Any]:
        """The JSON of /clusters: the upstreams in force, as fastpath reports them."""

    def app_health(self, key: str) -> tuple[bool, str] | None:
        """Runs the app's probe `<container>/<kind>`; None when there is no such probe."""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        sidecar = self.server.sidecar
        path = self.path.split("?")[0]
        if path == "/live":
            self._send(200, "text/plain", b"live\n")
        elif path == "/ready":
            ok = sidecar.ready
            self._send(200 if ok else 503, "text/plain", b"ready\n" if ok else b"not ready\n")
        elif path.startswith(APP_HEALTH):
            result = sidecar.app_health(path[len(APP_HEALTH) :])
            if result is None:
                self._send(404, "text/plain", b"no such probe\n")
            else:
                passed, detail = result
                self._send(200 if passed else 503, "text/plain", f"{detail}\n".encode())
        elif path == "/metrics" and sidecar.serving:
            self._send(200, "text/plain; version=0.0.4", sidecar.metrics().encode())
        elif path == "/clusters" and sidecar.serving:
            # Live upstream state: endpoints, ejections, circuit breakers, mirrors.
            self._send(200, "application/json", json.dumps(sidecar.clusters(), indent=2).encode())
        elif path == "/config_dump" and sidecar.serving:
            body = json.dumps(sidecar.config_dump(), indent=2).encode()
            self._send(200, "application/json", body)
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the admin port is scraped every few seconds; its access log is noise


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: hostport.HostPort, sidecar: Admin) -> None:
        self.address_family = addr.family
        super().__init__(addr, _Handler)
        self.sidecar = sidecar


def serve(addr: hostport.HostPort, sidecar: Admin) -> _Server:
    server = _Server(addr, sidecar)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return server
