"""The fuzz targets: one function per parser, bytes in, an invariant checked, nothing else.

Each target takes arbitrary bytes and must either accept them or refuse them with the parser's
own error type: any other exception, a hang, or a broken invariant is a finding. The same
functions run under atheris (coverage-guided, `tests/fuzz/run.py`, `make fuzz`) and, over the
seed corpus and every saved crash, under pytest (`tests/test_fuzz_corpus.py`), so each crash
found becomes a regression test by dropping its input in `tests/fuzz/crashes/<target>/`.

- `intent`: the intent YAML loader and validator. An intent, or diagnostics each naming a file
  and line; refused whole when any is an error; never an exception.
- `spiffe`: `SpiffeId.parse`. A parsed ID prints back as its input; else `IssuanceError`.
- `certificate`: `user_ca.load` (a user-provided CA) and `spiffe_id_of`, PEM or DER.
  An `Authority` or a `RefusedCAError` with a message.
- `webhook`: the webhook's HTTP handler and HMAC check, over a real socket pair. An HTTP answer
  (or a close); `on_push` only for a correct signature, answered 202.
- `admin`: a request head read by the sidecar's admin port (`reconciler.sidecar.admin`). A
  GET or HEAD with an absolute path, None at the end, or a `BadRequestError` with a status
  the port answers with.
- `jwks`: a JWKS document as the sidecar agent takes it from an issuer's `jwksUri` or
  `jwksFile` (`reconciler.sidecar.jwks.parse`, which runs fastpath's own JWKS parser). A
  document fastpath accepts, or a `ValueError` saying why.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import socket
import threading
from collections.abc import Callable

from cryptography import x509

from reconciler import _native, intent
from reconciler.gitsource import webhook
from reconciler.gitsource.credentials import Secret
from reconciler.identity import spiffe, user_ca, workload
from reconciler.identity.errors import IdentityError
from reconciler.intent.files import IntentFile, Snapshot
from reconciler.sidecar import admin, jwks

Target = Callable[[bytes], None]
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
WEBHOOK_SECRET = b"fuzz-webhook-secret"
MESH = b"""\
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {trustDomain: fuzz.local}
"""


def intent_loader(data: bytes) -> None:
    """One intent file of arbitrary bytes beside a valid Mesh."""
    snapshot = Snapshot(
        "fuzz@sha1:" + "0" * 40,
        (IntentFile("mesh.yaml", MESH), IntentFile("fuzz/input.yaml", data)),
    )
    checked, diagnostics = intent.check(snapshot)
    errors = [d for d in diagnostics if d.severity is intent.Severity.ERROR]
    assert (checked is None) == bool(errors), "an intent with errors must be refused whole"
    for d in diagnostics:
        assert d.position.file in ("mesh.yaml", "fuzz/input.yaml", "<repository>"), d
        assert d.position.line >= 0
        assert d.message, d


def spiffe_id(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        parsed = spiffe.SpiffeId.parse(text)
    except IdentityError:
        return
    assert str(parsed) == text, (parsed, text)
    assert spiffe.SpiffeId.parse(str(parsed)) == parsed


@functools.cache
def _ca_key() -> bytes:
    # A real key, so the certificate half is what varies; made once per process.
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate(data: bytes) -> None:
    """A user-provided CA certificate (PEM or not), and the SPIFFE ID of each certificate."""
    message = "accepted"
    try:
        user_ca.load(data, _ca_key(), NOW, "ca.pem", "ca.key")
    except IdentityError as e:
        message = str(e)
    assert message, "a refusal says why"
    try:
        certs = x509.load_pem_x509_certificates(data)
    except user_ca.UNREADABLE:
        certs = []
    with contextlib.suppress(*user_ca.UNREADABLE):
        certs.append(x509.load_der_x509_certificate(data))
    for cert in certs:
        try:
            found = workload.spiffe_id_of(cert)
        except user_ca.UNREADABLE:  # cryptography refuses a malformed extension when read
            continue
        if found is not None:
            assert str(found).startswith("spiffe://")


def webhook_request(data: bytes) -> None:
    """Raw bytes as one HTTP request to the webhook's handler, over a real socket pair.

    The first byte chooses whether the request is signed correctly, so both the HMAC check's
    accept and refuse paths are reached: with it set, the request line and headers are taken
    from the input and a correct signature header and Content-Length are added for its body.
    """
    pushed: list[int] = []
    receiver = _receiver(pushed)
    if data[:1] == b"\x01":
        head, _, body = data[1:].partition(b"\r\n\r\n")
        signature = webhook.sign(WEBHOOK_SECRET, body).encode()
        data = (
            b"POST /hook HTTP/1.1\r\n"
            + head.replace(b"\r\n\r\n", b"\r\n")
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nX-Hub-Signature-256: " + signature + b"\r\n\r\n" + body
        )  # fmt: skip
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5)
        theirs.settimeout(5)
        ours.sendall(data)
        ours.shutdown(socket.SHUT_WR)
        raised: list[BaseException] = []
        handler = threading.Thread(target=_handle, args=(receiver, theirs, raised))
        handler.start()
        answer = b""
        while chunk := ours.recv(65536):
            answer += chunk
        handler.join(10)
        assert not handler.is_alive(), "the handler hung"
    # An exception in the handler's thread is a crash even though the client saw only a close.
    if raised:
        raise raised[0]
    if answer:
        assert answer.startswith(b"HTTP/1."), answer[:80]
    status = answer[9:12]
    assert (status == b"202") == bool(pushed), (status, pushed)
    if pushed:
        # Only a body signed with the secret gets here; the body is never interpreted.
        assert receiver.accepted == len(pushed)


def _receiver(pushed: list[int]) -> webhook.WebhookReceiver:
    receiver = _shared_receiver()
    receiver._on_push = lambda: pushed.append(1)  # this input's own record
    receiver.accepted = 0
    return receiver


@functools.cache
def _shared_receiver() -> webhook.WebhookReceiver:
    # One receiver (its listening socket is never served): handlers are driven directly.
    return webhook.WebhookReceiver(Secret(WEBHOOK_SECRET.decode()), lambda: None)


def _handle(
    receiver: webhook.WebhookReceiver, conn: socket.socket, raised: list[BaseException]
) -> None:
    handler_class = receiver._server.RequestHandlerClass
    try:
        handler_class(conn, ("127.0.0.1", 1), receiver._server)
    except BaseException as e:  # handed to the fuzzed thread, which fails on it
        raised.append(e)
    finally:
        conn.close()  # what the server's shutdown_request does: the client sees the end


def jwks_document(data: bytes) -> None:
    try:
        document = jwks.parse(data)
    except ValueError as e:
        refusal = str(e)
        assert refusal, "a refusal says why"
        return
    # What the agent accepted goes into the ProxyConfig: fastpath must take it, with a key.
    assert _native.check_jwks(json.dumps(document)) >= 1


def admin_request(data: bytes) -> None:
    stream = io.BytesIO(data)
    try:
        request = admin.read_request(stream)
    except admin.BadRequestError as e:
        status, why = e.status, str(e)
        assert status in admin.REASONS, f"{status} has no reason phrase"
        assert why, "a refusal says why"
        return
    if request is None:
        assert stream.read() == b"", "only the end of the stream reads as no request"
        return
    assert request.path.startswith("/")
    assert "?" not in request.path
    assert all("!" <= c <= "~" for c in request.path), "only visible ASCII in a path"
    assert request.method, "a method"
    assert set(request.method) <= admin.TOKEN, "a method is a token"


TARGETS: dict[str, Target] = {
    "intent": intent_loader,
    "spiffe": spiffe_id,
    "certificate": certificate,
    "webhook": webhook_request,
    "jwks": jwks_document,
    "admin": admin_request,
}
