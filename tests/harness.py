"""What the harnesses of real components share: building one from tools/, free loopback
ports, and an HTTP readiness probe."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def build(script: Path, what: str, timeout: float) -> Path:
    """Run a tools/*/build.sh (instant when cached); the path it prints last. A failed build
    fails the test with the build's own error, never a skip."""
    done = subprocess.run(
        [str(script)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"building {what} failed ({script}):\n{done.stderr[-4000:]}", pytrace=False)
    return Path(done.stdout.strip().splitlines()[-1])


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 (held open together so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError):
        return False
