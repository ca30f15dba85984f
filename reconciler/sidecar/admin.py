"""The sidecar's admin port: /ready, /live, /metrics and /config_dump.

`/ready` answers 200 only once every listener is bound and certificates are loaded (and 503 again
while draining), so a pod can hold its app until the proxy is ready.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.sidecar.agent import Agent


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        agent = self.server.agent
        path = self.path.split("?")[0]
        if path == "/live":
            self._send(200, "text/plain", b"live\n")
        elif path == "/ready":
            ok = agent.ready
            self._send(200 if ok else 503, "text/plain", b"ready\n" if ok else b"not ready\n")
        elif path == "/metrics" and agent.proxy is not None:
            self._send(200, "text/plain; version=0.0.4", agent.metrics().encode())
        elif path == "/config_dump" and agent.proxy is not None:
            self._send(200, "application/json", json.dumps(agent.config_dump(), indent=2).encode())
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

    def __init__(self, addr: tuple[str, int], agent: Agent) -> None:
        super().__init__(addr, _Handler)
        self.agent = agent


def serve(addr: str, agent: Agent) -> _Server:
    host, _, port = addr.rpartition(":")
    server = _Server((host or "127.0.0.1", int(port)), agent)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return server
