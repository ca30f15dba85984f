"""The sidecar's admin port: /ready, /live, /metrics, /config_dump, /clusters and the app's own
probes (/app-health/<container>/<kind>, see `probes`).

`/ready` answers 200 only once every listener is bound and certificates are loaded (and 503 again
while draining), so a pod can hold its app until the proxy is ready.

The port speaks just enough HTTP/1.1 for what calls it (kubelet probes, Prometheus, curl): GET
and HEAD without a body, keep-alive, request heads bounded in size and in time, and at most
`MAX_CONNECTIONS` connections at once. It is served
by `socketserver` rather than `http.server` because that module imports `http.client`, which
imports `ssl`: OpenSSL's libraries then cost every sidecar about 4.5 MB of RSS for a port that
never speaks TLS (docs/benchmarks.md, issue 15).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import socketserver
import threading
from typing import Any, Protocol

from reconciler import hostport
from reconciler.sidecar import wire
from reconciler.sidecar.probes import PATH as APP_HEALTH

log = logging.getLogger("weft.sidecar.admin")

MAX_LINE = 8 * 1024  # one request line or header line
MAX_HEAD = 32 * 1024  # the request line and all headers
MAX_HEADERS = 100
IDLE_SECONDS = 10.0  # the time a request head may take to arrive, kept-alive wait included
MAX_CONNECTIONS = 64
DRAIN_SECONDS = 0.2
TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
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

    Raises `BadRequestError` for anything but a well-formed request without a body (RFC 9112:
    a token method, an origin- or absolute-form target, HTTP/1.0 or 1.1, token header names, no
    obsolete line folding or control characters in values, one Host in HTTP/1.1)."""
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
    if not all("!" <= c <= "~" for c in target):
        raise BadRequestError(400, "the target must be visible ASCII")
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):  # RFC 9112 3.2.2: absolute form accepted
        target = "/" + rest.partition("/")[2]
    if not target.startswith("/"):
        raise BadRequestError(400, "the target must be a path")
    headers: dict[str, str] = {}
    size, count, hosts = len(line), 0, 0
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
        value = value.removesuffix("\n").removesuffix("\r").strip(" \t")
        if any(c in "\r\n\0" for c in value):
            raise BadRequestError(400, "a control character in a header value")
        hosts += key == "host"
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if version == "HTTP/1.1" and hosts != 1:  # RFC 9112 3.2
        raise BadRequestError(400, "an HTTP/1.1 request names its Host once")
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


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn: socket.socket = self.request
        reader = wire.DeadlineReader(conn)
        while True:
            # One deadline for the whole head, from the end of the last answer: a peer that
            # trickles it in, or sits on a kept-alive connection, is closed when it passes.
            reader.expect(self.server.idle_seconds)
            try:
                request = read_request(reader)
            except BadRequestError as e:
                self._send(response(e.status, "text/plain", f"{e}\n".encode(), close=True))
                self._drain(conn)
                return
            except OSError:  # the deadline passed, or the peer reset
                return
            if request is None:
                return
            head = request.method == "HEAD"
            if request.method in ("GET", "HEAD"):
                try:
                    status, content_type, body = route(self.server.sidecar, request.path)
                except Exception as e:  # a bug behind one endpoint must not end the port
                    log.warning(f"admin {request.path}: {e!r}")
                    status, content_type, body = 500, "text/plain", b"internal error\n"
            else:
                status, content_type, body = 405, "text/plain", b"GET or HEAD only\n"
            close = not request.keep_alive or status == 500
            if not self._send(response(status, content_type, body, head=head, close=close)):
                return
            if close:
                return

    def _send(self, data: bytes) -> bool:
        conn: socket.socket = self.request
        try:
            conn.settimeout(self.server.idle_seconds)  # a peer that never reads is let go
            conn.sendall(data)
        except OSError:  # the peer went away
            return False
        return True

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        """After refusing a request: end our side and read (and drop) what the peer still
        sends, briefly, so that closing with unread bytes does not reset the connection
        before the peer has read the answer."""
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(DRAIN_SECONDS)
            for _ in range(16):
                if not conn.recv(4096):
                    return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = (
        128  # a burst of probes and scrapes waits in the backlog, not in SYN retries
    )

    def __init__(
        self,
        addr: hostport.HostPort,
        sidecar: Admin,
        idle_seconds: float = IDLE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address_family = addr.family
        self.sidecar, self.idle_seconds = sidecar, idle_seconds
        # Each connection is a thread: past the cap a new one is closed at once, so idle or
        # hostile connections cannot take the sidecar's memory or its pids.
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def server_port(self) -> int:
        return int(self.server_address[1])


def serve(
    addr: hostport.HostPort,
    sidecar: Admin,
    idle_seconds: float = IDLE_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
) -> _Server:
    server = _Server(addr, sidecar, idle_seconds, max_connections)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return server
