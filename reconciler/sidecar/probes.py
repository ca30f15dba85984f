"""The app's own kubelet probes, run by the sidecar: what `/app-health/<container>/<kind>` asks.

Inbound capture sends every connection to a meshed pod port to the sidecar's mTLS listener,
which refuses the kubelet's plaintext probe. The cure, as in Istio, is a probe rewritten to
`GET /app-health/<container>/<kind>` on the sidecar's admin port, with the sidecar given the
originals (env `WEFT_APP_PROBES`: JSON by `<container>/<kind>`, each `{"probe": <the app's
probe>, "port": <its port as a number>}`). The sidecar runs the original from inside the pod, to
127.0.0.1: its own traffic is never captured, so the probe reaches the app directly, and the
answer (200 or 503) is the kubelet's verdict. Success is the kubelet's: an HTTP status from
200 to 399, a TCP connection made, a gRPC health check answered SERVING.

On Kubernetes the target records the originals and annotates the pod template; the admission
policy in deploy/30-probes.yaml rewrites the pods' probes (docs/kubernetes.md, *Probes*).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from reconciler.sidecar import wire

ENV = "WEFT_APP_PROBES"
PATH = "/app-health/"
DEFAULT_TIMEOUT = 1.0  # the kubelet's default timeoutSeconds
HOST = "127.0.0.1"


def from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, dict[str, Any]]:
    """The probes the target recorded; a value that is not a JSON object of objects is none
    (the target writes it, so that would be a bug, not something to run)."""
    try:
        probes = json.loads(environ.get(ENV) or "{}")
    except ValueError:
        return {}
    if not isinstance(probes, dict):
        return {}
    return {
        k: v
        for k, v in probes.items()
        if isinstance(v, dict)
        and isinstance(v.get("probe"), dict)
        and isinstance(v.get("port"), int)
    }


def _timeout(probe: Mapping[str, Any]) -> float:
    seconds = probe.get("timeoutSeconds")
    return float(seconds) if isinstance(seconds, int) and seconds > 0 else DEFAULT_TIMEOUT


def run(entry: Mapping[str, Any], host: str = HOST) -> tuple[bool, str]:
    """Runs one recorded probe against the app; (passed, what happened) for the admin answer."""
    probe, port = entry["probe"], int(entry["port"])
    timeout = _timeout(probe)
    try:
        if "httpGet" in probe:
            return _http(probe["httpGet"], host, port, timeout)
        if "tcpSocket" in probe:
            with socket.create_connection((host, port), timeout=timeout):
                return True, f"tcp {port}: connected"
        if "grpc" in probe:
            return _grpc(probe["grpc"], host, port, timeout)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"{type(e).__name__}: {e}"
    return False, "no httpGet, tcpSocket or grpc check in the probe"


MAX_LINE = 8 * 1024
MAX_HEAD = 64 * 1024


def _http(get: Mapping[str, Any], host: str, port: int, timeout: float) -> tuple[bool, str]:
    """One GET within `timeout` (connect, TLS, send and the response's head), passed on a status
    from 200 to 399 as the kubelet's probe is. The head must be well-formed HTTP/1 to its empty
    line, as Go's client insists; the body is not read.

    Written on a socket rather than with http.client, which imports `ssl` at import: OpenSSL's
    libraries would cost every probing sidecar ~4.5 MB of RSS. Only an HTTPS probe loads it."""
    path = str(get.get("path") or "/")
    # By lower-case name, spelled as given: a probe's own Host (any case) replaces ours, as
    # the kubelet's does; a name the probe repeats is sent each time.
    ours = {"host": ("Host", f"{host}:{port}"), "user-agent": ("User-Agent", "kube-probe/weft")}
    ours |= {"accept": ("Accept", "*/*"), "connection": ("Connection", "close")}
    theirs = [(str(h["name"]), str(h.get("value", ""))) for h in get.get("httpHeaders") or ()]
    for name, _ in theirs:
        ours.pop(name.lower(), None)
    headers = [*ours.values(), *theirs]
    fields = [f for pair in headers for f in pair]
    if any(c <= " " or c == "\x7f" for c in path) or any(set(f) & set("\r\n\0") for f in fields):
        raise ValueError("a control character or space in the probe's path or headers")
    text = "".join(f"{k}: {v}\r\n" for k, v in headers)
    request = f"GET {path} HTTP/1.1\r\n{text}\r\n".encode()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as plain:
        conn = plain
        if str(get.get("scheme", "HTTP")).upper() == "HTTPS":
            import ssl  # noqa: PLC0415

            # The kubelet does not verify an HTTPS probe's certificate either.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            plain.settimeout(max(deadline - time.monotonic(), 0.001))
            conn = context.wrap_socket(plain)
        with conn:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.sendall(request)
            status = _status(wire.DeadlineReader(conn), deadline, f"GET :{port}{path}")
    return 200 <= status < 400, f"GET :{port}{path}: {status}"


def _status(reader: wire.DeadlineReader, deadline: float, what: str) -> int:
    """The status of the response head `reader` reads by `deadline`."""
    reader.expect(deadline - time.monotonic())
    line = reader.readline(MAX_LINE)
    parts = line.rstrip(b"\r\n").split(b" ", 2)
    version, code = parts[0], parts[1] if len(parts) > 1 else b""
    well_formed = line.endswith(b"\n") and version.startswith(b"HTTP/1.")
    if not well_formed or len(code) != 3 or not code.isdigit():
        raise ValueError(f"{what}: not an HTTP/1 status line: {line[:64]!r}")
    size = len(line)
    while (field := reader.readline(MAX_LINE)) not in (b"\r\n", b"\n"):
        size += len(field)
        name, colon, _ = field.partition(b":")
        bad = not field.endswith(b"\n") or not colon or not name or name != name.strip()
        if bad or size > MAX_HEAD:
            raise ValueError(f"{what}: a malformed response header: {field[:64]!r}")
    return int(code)


# grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING
_SERVING = 1


def _grpc(check: Mapping[str, Any], host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        # Only a pod with a gRPC probe pays for grpcio (untyped).
        import grpc  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return False, "a gRPC probe needs grpcio in the sidecar's image (pip install weft[probes])"

    service = str(check.get("service") or "").encode()
    # HealthCheckRequest{service = 1}: one length-delimited field, written by hand so the
    # sidecar needs no generated stubs.
    request = b"\x0a" + _varint(len(service)) + service if service else b""
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            reply: bytes = call(request, timeout=timeout)
        except grpc.RpcError as e:
            return False, f"grpc :{port}: {e.code().name}"
    status = _status_field(reply)
    return status == _SERVING, f"grpc :{port}: status {status}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(message: bytes, i: int) -> tuple[int, int]:
    """The varint at `i`, and where the next field starts."""
    value = shift = 0
    while i < len(message):
        b = message[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return value, i


def _status_field(message: bytes) -> int:
    """Field 1 (varint) of a HealthCheckResponse; 0 (UNKNOWN) when absent."""
    i = 0
    while i < len(message):
        tag = message[i]
        value, i = _read_varint(message, i + 1)
        if tag & 0x07 == 0 and tag >> 3 == 1:
            return value
        if tag & 0x07 == 2:  # length-delimited (value is its length): skip it
            i += value
        elif tag & 0x07 != 0:
            return 0  # a wire type a HealthCheckResponse never holds
    return 0
