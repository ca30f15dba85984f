"""The push webhook: `POST /hook`, signed GitHub-style, asks for an immediate fetch.

The body is never parsed: a valid signature only says "something was pushed", and the fetch
that follows finds out what. So a forged or replayed hook can at most cause one extra fetch, and
an unsigned or wrongly signed one changes nothing at all.

| request | answer |
|---|---|
| `POST /hook` with `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>` | 202, `on_push()` |
| signature missing, malformed or wrong | 401 |
| body over `max_body` bytes (1 MiB) | 413, body not read |
| no Content-Length (chunked) | 411 |
| another method on `/hook` | 405 |
| another path | 404 |
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import logging
import threading
from collections.abc import Callable

from reconciler import hostport
from reconciler.gitsource.credentials import Secret

log = logging.getLogger(__name__)

PATH = "/hook"
SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_BODY = 1024 * 1024
# A client gets this long to send its request: a slow one cannot hold a thread for ever.
REQUEST_TIMEOUT = 10.0


def sign(secret: bytes, body: bytes) -> str:
    """The header value a sender puts on `body`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body`, compared in constant time."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


class WebhookReceiver:
    """A small HTTP server on its own threads; `on_push` runs on the request's thread."""

    def __init__(
        self,
        secret: Secret,
        on_push: Callable[[], None],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body: int = MAX_BODY,
    ) -> None:
        if not secret.reveal():
            raise ValueError("the webhook secret is empty")
        receiver = self

        class Handler(_Handler):
            pass

        Handler.receiver = receiver
        self._secret = secret
        self._on_push = on_push
        self.max_body = max_body
        self.accepted = 0  # signed hooks answered 202
        self.refused = 0  # hooks answered 401
        self._server = hostport.http_server(hostport.HostPort(host, port), Handler)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WebhookReceiver({self.url!r})"

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return (str(host), int(port))

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{hostport.join(host, port)}{PATH}"

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long close() waits for the loop to notice
            name="weft-webhook",
            daemon=True,
        )
        self._thread.start()
        log.info("webhook receiver listening on %s", self.url)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(self, body: bytes, signature: str | None) -> bool:
        """Verify one hook; call `on_push` and return True when it is signed with the secret."""
        if not verify(self._secret.reveal().encode(), body, signature):
            self.refused += 1
            return False
        self.accepted += 1
        self._on_push()
        return True


class _Handler(http.server.BaseHTTPRequestHandler):
    receiver: WebhookReceiver
    timeout = REQUEST_TIMEOUT
    server_version = "weft-webhook"
    sys_version = ""
    # http.server's default, HTTP/0.9, answers a request line without a version (and any
    # garbage line) with a bare body and no status line, which no client can read as a
    # refusal; found by fuzzing (tests/fuzz/crashes/webhook/). Every answer has a status.
    default_request_version = "HTTP/1.0"

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server records an explicit `HTTP/0.9` before it finds the rest of the line bad,
        # and then answers that refusal too as a bare body (found by fuzzing): a status line.
        if not self.request_version.startswith("HTTP/1."):
            self.request_version = "HTTP/1.0"
            self.close_connection = True
        super().send_error(code, message, explain)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        # An explicit `HTTP/0.9` would get the same bare answer: refuse it with a status line.
        major, minor = self.request_version.split("/", 1)[1].split(".")
        if (int(major), int(minor)) < (1, 0):
            self.request_version = "HTTP/1.0"
            self.close_connection = True
            self.send_error(505, "HTTP/1.0 or HTTP/1.1 only")
            return False
        return True

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._answer(404, "not found")
            return
        length = self.headers.get("Content-Length")
        # `isdigit` alone admits digits `int` refuses ("9¹"; found by fuzzing): ASCII only.
        if length is None or not (length.isascii() and length.isdigit()):
            self._answer(411, "Content-Length required")
            return
        if int(length) > self.receiver.max_body:
            self.close_connection = True  # the body stays unread
            self._answer(413, f"body over {self.receiver.max_body} bytes")
            return
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            self.close_connection = True
            return
        if not self.receiver.receive(body, self.headers.get(SIGNATURE_HEADER)):
            log.warning("webhook from %s refused: bad or missing signature", self.client_address[0])
            self._answer(401, "bad or missing signature")
            return
        log.info("webhook from %s: fetching now", self.client_address[0])
        self._answer(202, "fetch triggered")

    def do_GET(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def do_HEAD(self) -> None:
        self._not_allowed()

    def _not_allowed(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._answer(404, "not found")
            return
        self._answer(405, "only POST", allow=True)

    def _answer(self, status: int, text: str, *, allow: bool = False) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", "POST")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # http.server writes every request to stderr; ours go to logging, at debug.
        log.debug("webhook %s: %s", self.client_address[0], format % args)
