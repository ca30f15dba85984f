"""The push webhook over real HTTP on loopback: signed hooks trigger a fetch, nothing else does."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.gitsource import Secret, WebhookReceiver, credentials, webhook

SECRET = "hook-secret-7d1e-never-printed"
BODY = b'{"ref":"refs/heads/main","after":"' + b"a" * 40 + b'"}'


@pytest.fixture
def pushed() -> threading.Event:
    return threading.Event()


@pytest.fixture
def receiver(pushed: threading.Event) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(Secret(SECRET), pushed.set, max_body=4096) as r:
        yield r


def post(
    receiver: WebhookReceiver,
    body: bytes,
    headers: dict[str, str],
    path: str = "/hook",
    method: str = "POST",
) -> tuple[int, bytes]:
    host, port = receiver.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_signature_is_github_style() -> None:
    # the example from GitHub's documentation on validating webhook deliveries
    assert webhook.sign(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    assert webhook.verify(b"k", b"body", webhook.sign(b"k", b"body"))
    assert not webhook.verify(b"k", b"body", None)
    assert not webhook.verify(b"k", b"body", webhook.sign(b"other", b"body"))


def test_signed_hook_triggers_a_fetch(
    receiver: WebhookReceiver, pushed: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signature = webhook.sign(SECRET.encode(), BODY)
    status, _ = post(receiver, BODY, {webhook.SIGNATURE_HEADER: signature})
    assert status == 202
    assert pushed.is_set()
    assert (receiver.accepted, receiver.refused) == (1, 0)
    assert SECRET not in caplog.text + repr(receiver)
    assert signature not in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({webhook.SIGNATURE_HEADER: ""}, id="empty"),
        pytest.param({webhook.SIGNATURE_HEADER: "sha256=" + "0" * 64}, id="wrong"),
        pytest.param({webhook.SIGNATURE_HEADER: webhook.sign(b"guess", BODY)}, id="other-secret"),
        pytest.param(
            {webhook.SIGNATURE_HEADER: webhook.sign(SECRET.encode(), BODY + b" ")}, id="other-body"
        ),
        pytest.param({"X-Hub-Signature": "sha1=" + "0" * 40}, id="sha1-header-is-not-accepted"),
        pytest.param({webhook.SIGNATURE_HEADER: "garbage"}, id="malformed"),
    ],
)
def test_unsigned_or_wrongly_signed_hooks_change_nothing(
    headers: dict[str, str], receiver: WebhookReceiver, pushed: threading.Event
) -> None:
    status, _ = post(receiver, BODY, headers)
    assert status == 401
    assert not pushed.is_set()
    assert (receiver.accepted, receiver.refused) == (0, 1)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/hook", 405, id="get"),
        pytest.param("PUT", "/hook", 405, id="put"),
        pytest.param("POST", "/other", 404, id="other-path"),
        pytest.param("GET", "/", 404, id="root"),
    ],
)
def test_other_requests(
    method: str, path: str, status: int, receiver: WebhookReceiver, pushed: threading.Event
) -> None:
    signature = webhook.sign(SECRET.encode(), BODY)
    got, _ = post(receiver, BODY, {webhook.SIGNATURE_HEADER: signature}, path, method)
    assert got == status
    assert not pushed.is_set()


def raw(receiver: WebhookReceiver, request: bytes) -> bytes:
    with socket.create_connection(receiver.address, timeout=5) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        return answer


def test_body_over_the_limit_is_refused_unread(
    receiver: WebhookReceiver, pushed: threading.Event
) -> None:
    answer = raw(receiver, b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 413 ")
    assert not pushed.is_set()


def test_body_without_length_is_refused(receiver: WebhookReceiver, pushed: threading.Event) -> None:
    answer = raw(
        receiver,
        b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.0 411 ")
    assert not pushed.is_set()


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        WebhookReceiver(Secret(""), lambda: None)


def test_the_secret_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    env = {"WEFT_WEBHOOK_SECRET_FILE": str(tmp_path / "secret")}
    secret = credentials.secret_from_env(env, "WEFT_WEBHOOK_SECRET")
    assert secret is not None
    assert secret.reveal() == SECRET
    assert credentials.secret_from_env({}, "WEFT_WEBHOOK_SECRET") is None
