"""Lines of an HTTP/1 head read off a socket against one deadline, for the admin port and the
app's HTTP probes.

A socket timeout bounds each `recv` alone: a peer that sends a byte just before every timeout
would hold a thread for as long as it likes. `DeadlineReader` bounds the whole of what is read
between two `expect` calls, however it is trickled.
"""

from __future__ import annotations

import socket
import time

CHUNK = 4096


class DeadlineReader:
    """`readline` over `sock`, every read before the deadline set by `expect`.

    Bytes read past a line stay buffered for the next one, so requests sent back to back
    (pipelined) are read in turn. When the deadline passes, `readline` raises `TimeoutError`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.deadline = time.monotonic()

    def expect(self, seconds: float) -> None:
        """What is read from now on must arrive within `seconds`."""
        self.deadline = time.monotonic() + seconds

    def readline(self, size: int = -1, /) -> bytes:
        """One line with its end (at most `size` bytes, fewer only at the end of the stream)."""
        limit = size if size >= 0 else 1 << 30
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0 or len(self.buffer) >= limit:
                take = end + 1 if end >= 0 else limit
                line = bytes(self.buffer[:take])
                del self.buffer[:take]
                return line
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the peer took too long")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(CHUNK)
            if not chunk:  # the end of the stream: what is left, maybe nothing
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            self.buffer += chunk
