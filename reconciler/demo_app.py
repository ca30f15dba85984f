"""`weft demo-app`: the small service the template's Services run locally.

It answers on each port in `WEFT_PORTS` (set by the local runtime): HTTP ports report who this
is and who called (the `x-weft-peer` header the sidecar sets from the caller's verified
certificate); `/call/<host:port>/<path>` calls another service through this app's sidecar
(`HTTP_PROXY`) and reports what came back. TCP ports echo. The app knows nothing of the mesh.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socketserver
import threading
import urllib.error
import urllib.request
from typing import Any

from reconciler import hostport

SERVICE = os.environ.get("WEFT_SERVICE", "demo")
INSTANCE = os.environ.get("WEFT_INSTANCE", "default")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/call/"):
            target = self.path.removeprefix("/call/")
            authority, _, rest = target.partition("/")
            try:
                with urllib.request.urlopen(f"http://{authority}/{rest}", timeout=10) as resp:
                    status, body = resp.status, resp.read().decode()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read().decode()
            except OSError as e:
                status, body = 502, f"{type(e).__name__}: {e}"
            return self._reply(
                status,
                {
                    "service": SERVICE,
                    "instance": INSTANCE,
                    "called": authority,
                    "status": status,
                    "response": _json_or_text(body),
                },
            )
        return self._reply(
            200,
            {
                "service": SERVICE,
                "instance": INSTANCE,
                "method": self.command,
                "path": self.path,
                "caller": self.headers.get("x-weft-peer", "unknown"),
            },
        )

    do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815  # http.server's names

    def log_message(self, format: str, *args: Any) -> None:  # the base class's name
        pass


def _json_or_text(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.strip()


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class ThreadingTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class ThreadingHTTP(http.server.ThreadingHTTPServer):
    daemon_threads = True


def main() -> int:
    ports: dict[str, dict[str, str]] = json.loads(os.environ.get("WEFT_PORTS", "{}"))
    if not ports:
        port = os.environ.get("PORT", "8080")
        ports = {"http": {"addr": f"127.0.0.1:{port}", "protocol": "http"}}
    servers: list[socketserver.BaseServer] = []
    for spec in ports.values():
        addr = hostport.parse(spec["addr"])
        server: socketserver.BaseServer = (
            ThreadingTCP(addr, Echo) if spec["protocol"] == "tcp" else ThreadingHTTP(addr, Handler)
        )
        servers.append(server)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    return 0
