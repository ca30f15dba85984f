"""A test rig: real backends on loopback and real fastpath sidecars started from real intent.

Everything listens on 127.0.0.1 with ports the kernel picks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from reconciler import _native, compiler, intent
from reconciler.targets.local.binding import bind_endpoints, to_json
from tests.conftest import write_repo
from tests.pki import CA, Identity


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers with what it received; /status/N answers N; POST bodies are counted, streamed."""

    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes; without this, Nagle and delayed ACKs add 40 ms.
    disable_nagle_algorithm = True
    server: EchoServer

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        received = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                while size:
                    chunk = self.rfile.read(min(size, 1 << 16))
                    received += len(chunk)
                    size -= len(chunk)
                self.rfile.readline()
        else:
            while received < length:
                received += len(self.rfile.read(min(length - received, 1 << 16)))
        status = 200
        if "/sleep/" in self.path:  # a slow request, for drain tests
            time.sleep(int(self.path.rsplit("/", 1)[1]) / 1000)
        if self.path.startswith("/status/"):
            status = int(self.path.split("/")[2])
        self.server.hits += 1
        body = json.dumps(
            {
                "service": self.server.name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "received": received,
            }
        ).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815  # http.server's names

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.name = name
        self.hits = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class TcpEchoHandler(socketserver.BaseRequestHandler):
    """Echoes bytes; when the client half-closes, sends a trailer with the count and closes."""

    def handle(self) -> None:
        total = 0
        while data := self.request.recv(65536):
            total += len(data)
            self.request.sendall(data)
        self.request.sendall(f"bye:{total}".encode())
        self.request.shutdown(socket.SHUT_WR)


class TcpEchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), TcpEchoHandler)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def mesh_yaml(trust_domain: str, **spec: str) -> str:
    """The Mesh document of a test intent; `spec` adds fields (mtls=..., defaultPolicy=...)."""
    fields = ", ".join(f"{k}: {v}" for k, v in {"trustDomain": trust_domain, **spec}.items())
    return (
        f"apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\nspec: {{{fields}}}\n"
    )


# The two services most tests need: a/web calls b/api on port 8080.
WEB_AND_API = """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: a}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: b}
spec: {ports: [{name: http, port: 8080}]}
"""


# b accepts every service of namespace a.
ALLOW_A_TO_B = """\
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-a, namespace: b}
spec: {from: [{namespaces: [a]}]}
"""


def compiled(
    root: Path, files: dict[str, str], revision: str = "test@sha1:" + "1" * 40
) -> dict[tuple[str, str], dict[str, Any]]:
    """Compile intent written to `root`; ProxyConfigs as dicts, by (namespace, service)."""
    write_repo(root, files)
    snapshot = dataclasses.replace(intent.files.from_directory(root), revision=revision)
    desired = compiler.compile(intent.load(snapshot))
    return {key: c.as_dict() for key, c in desired.proxy_configs.items()}


def start(
    config: dict[str, Any],
    who: Identity,
    listeners: dict[str, Any],
    endpoints: dict[str, list[str]] | None = None,
) -> _native.Proxy:
    bound = bind_endpoints(config, endpoints or {})
    return _native.start(to_json(bound), who.chain, who.key, who.bundle, json.dumps(listeners))


def identity(ca: CA, trust_domain: str, ns: str, sa: str) -> Identity:
    return ca.issue(f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def http_get(url: str, host: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class AgentProcess:
    """A real `weft sidecar` process; its JSON log lines are collected as they come."""

    def __init__(
        self,
        config: Path,
        certs: Path,
        listeners: dict[str, Any],
        drain_timeout: float = 5,
        poll: float | None = None,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        self.config, self.certs = config, certs
        self.args, self.env = args, env  # extra `weft sidecar` arguments; the environment
        self.wrapper = wrapper  # what runs it, e.g. `ip netns exec <namespace>`
        self.listeners = config.with_name(config.stem + ".listeners.json")
        self.listeners.write_text(json.dumps(listeners))
        self.drain_timeout = drain_timeout
        self.poll = poll  # seconds between the agent's looks at its files; None: its default
        self.lines: list[dict[str, Any]] = []

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "reconciler.sidecar",
                "--config",
                str(self.config),
                "--certs",
                str(self.certs),
                "--listeners",
                str(self.listeners),
                "--admin",
                "127.0.0.1:0",
                "--drain-timeout",
                str(self.drain_timeout),
                *(["--poll", str(self.poll)] if self.poll is not None else []),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            env=self.env,
            text=True,
        )
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        wait_until(
            lambda: self.event("started") is not None or self.proc.poll() is not None, timeout=30
        )
        started = self.event("started")
        assert started is not None, f"sidecar did not start: {self.lines}"
        admin = self.event("admin")
        assert admin is not None
        self.admin = f"http://{admin['bound']['admin']}"
        self.bound: dict[str, str] = started["bound"]
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(json.loads(line))

    def event(self, name: str) -> dict[str, Any] | None:
        return next((entry for entry in self.lines if entry.get("event") == name), None)

    def dump(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(http_get(f"{self.admin}/config_dump")[1])
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
