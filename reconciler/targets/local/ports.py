"""Stable loopback ports for the local runtime.

A listener keeps its port across revisions and restarts (persisted in the state directory),
so a policy change never moves an address an app or a user is using.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path

FIRST_PORT = 21000
LAST_PORT = 29999


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Ports:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.taken: dict[str, int] = json.loads(path.read_text())
        except FileNotFoundError:
            self.taken = {}

    def get(self, key: str) -> int:
        if key in self.taken:
            return self.taken[key]
        used = set(self.taken.values())
        # Scan from a point of this state directory's own: two meshes on one machine (tests in
        # parallel, a second `weft up`) would otherwise both start at FIRST_PORT, and a port one
        # has allocated but whose listener is not bound at that instant (an app restarting)
        # would be handed out twice.
        span = LAST_PORT - FIRST_PORT + 1
        start = int.from_bytes(hashlib.sha256(str(self.path).encode()).digest()[:4]) % span
        for offset in range(span):
            port = FIRST_PORT + (start + offset) % span
            if port not in used and _free(port):
                self.taken[key] = port
                self._save()
                return port
        raise OSError(f"no free loopback port in {FIRST_PORT}-{LAST_PORT}")

    def addr(self, key: str) -> str:
        return f"127.0.0.1:{self.get(key)}"

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ports.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.taken, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
