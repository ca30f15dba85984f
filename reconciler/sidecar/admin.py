"""The sidecar's admin port: /ready, /live, /metrics, /config_dump, /clusters and the app's own
probes (/app-health/<container>/<kind>, see `probes`).

`/ready` answers 200 only once every listener is bound and certificates are loaded (and 503 again
while draining), so a pod can hold its app until the proxy is ready.

The port speaks just enough HTTP/1.1 for what calls it (kubelet probes, Prometheus, curl): GET
and HEAD without a body, keep-alive, bounded request heads and idle connections. It is served
by `socketserver` rather than `http.server` because that module imports `http.client`, which
imports `ssl`: OpenSSL's libraries then cost every sidecar about 4.5 MB of RSS for a port that
never speaks TLS (docs/benchmarks.md, issue 15).
"""

from __future__ import annotations

import dataclasses
import json
import socketserver
import threading
from typing import Any, Protocol

from reconciler import hostport
from reconciler.sidecar.probes import PATH as APP_HEALTH

MAX_LINE = 8 * 1024  # one request line or header line
MAX_HEAD = 32 * 1024  # the request line and all headers
MAX_HEADERS = 100
IDLE_SECONDS = 30.0  # a connection that sends nothing for this long is closed
TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


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


class Lines(Protocol):
    """Where a request is read from: a socket's binary file, or bytes in a test."""

    def readline(self, size: int = -1, /) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str  # the target without its query
    keep_alive: bool


class BadRequestError(Exception):
    """A request the port refuses; the connection is closed after the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _line(stream: Lines, too_long: int) -> bytes:
    line = stream.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BadRequestError(too_long, "line too long")
    if line and not line.endswith(b"\n"):
        raise BadRequestError(400, "the peer stopped in the middle of a line")
    return line


def read_request(stream: Lines) -> Request | None:
    """The next request's head from `stream`; None when the peer closed between requests.

    Raises `BadRequestError` for anything but a well-formed GET or HEAD without a body (RFC 9112:
    origin-form target, HTTP/1.0 or 1.1, token header names, no obsolete line folding)."""
    line = _line(stream, 414)
    if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: one empty line before a request is ignored
        line = _line(stream, 414)
    if not line:
        return None
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3:
        raise BadRequestError(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if not method or not set(method) <= TOKEN:
        raise BadRequestError(400, "the method is not a token")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        status = 505 if version.startswith("HTTP/") else 400
        raise BadRequestError(status, f"{version[:16]!r} is not HTTP/1.0 or HTTP/1.1")
    if not target.startswith("/") or not all("!" <= c <= "~" for c in target):
        raise BadRequestError(400, "the target must be a path of visible ASCII")
    headers: dict[str, str] = {}
    size, count = len(line), 0
    while True:
        field = _line(stream, 431)
        size += len(field)
        if not field:
            raise BadRequestError(400, "the request ended inside its headers")
        if field in (b"\r\n", b"\n"):
            break
        count += 1
        if size > MAX_HEAD or count > MAX_HEADERS:
            raise BadRequestError(431, "request headers too large")
        name, colon, value = field.decode("latin-1").partition(":")
        if not colon or not name or not set(name) <= TOKEN:
            raise BadRequestError(400, "malformed header line")  # folding starts with a space
        key = name.lower()
        value = value.strip(" \t\r\n")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise BadRequestError(400, "a request body is not accepted")
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = version == "HTTP/1.1" and "close" not in tokens
    return Request(method, target.split("?", 1)[0], keep_alive)


def route(sidecar: Admin, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of GET `path`."""
    if path == "/live":
        return 200, "text/plain", b"live\n"
    if path == "/ready":
        ok = sidecar.ready
        return (200, "text/plain", b"ready\n") if ok else (503, "text/plain", b"not ready\n")
    if path.startswith(APP_HEALTH):
        result = sidecar.app_health(path[len(APP_HEALTH) :])
        if result is None:
            return 404, "text/plain", b"no such probe\n"
        passed, detail = result
        return 200 if passed else 503, "text/plain", f"{detail}\n".encode()
    if path == "/metrics" and sidecar.serving:
        return 200, "text/plain; version=0.0.4", sidecar.metrics().encode()
    if path == "/clusters" and sidecar.serving:
        # Live upstream state: endpoints, ejections, circuit breakers, mirrors.
        return 200, "application/json", json.dumps(sidecar.clusters(), indent=2).encode()
    if path == "/config_dump" and sidecar.serving:
        return 200, "application/json", json.dumps(sidecar.config_dump(), indent=2).encode()
    return 404, "text/plain", b"not found\n"


def response(
    status: int, content_type: str, body: bytes, *, head: bool = False, close: bool = False
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"content-type: {content_type}",
        f"content-length: {len(body)}",
    ]
    if status == 405:
        lines.append("allow: GET, HEAD")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_seconds)

    def handle(self) -> None:
        while True:
            try:
                request = read_request(self.rfile)
            except BadRequestError as e:
                self._write(response(e.status, "text/plain", f"{e}\n".encode(), close=True))
                return
            except OSError:  # idle too long, or reset
                return
            if request is None:
                return
            head = request.method == "HEAD"
            if request.method in ("GET", "HEAD"):
                status, content_type, body = route(self.server.sidecar, request.path)
            else:
                status, content_type, body = 405, "text/plain", b"GET or HEAD only\n"
            close = not request.keep_alive
            if not self._write(response(status, content_type, body, head=head, close=close)):
                return
            if close:
                return

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the peer went away
            return False
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, addr: hostport.HostPort, sidecar: Admin, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self.address_family = addr.family
        self.sidecar, self.idle_seconds = sidecar, idle_seconds
        super().__init__(addr, _Handler)

    @property
    def server_port(self) -> int:
        return int(self.server_address[1])


def serve(addr: hostport.HostPort, sidecar: Admin, idle_seconds: float = IDLE_SECONDS) -> _Server:
    server = _Server(addr, sidecar, idle_seconds)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return server
