"""An identity provider that serves hostile JSON: the agent's JWKS reader refuses it with a
`ValueError` (which its refresh loop catches and reports as a failed fetch), never another
exception that would stop the agent. Served over real HTTP on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from reconciler.sidecar import jwks

DEEP = b'{"keys": ' + b"[" * 5000  # deeper than the JSON decoder recurses


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(DEEP)))
        self.end_headers()
        self.wfile.write(DEEP)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def idp() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_deeply_nested_discovery_and_jwks_are_refused_as_value_errors(idp: str) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        jwks.read(f"uri:{idp}/jwks.json")
    with pytest.raises(ValueError, match="nested too deeply"):
        jwks.read(f"issuer:{idp}")
    cache = jwks.Cache()
    cache.refresh([f"uri:{idp}/jwks.json"])  # what the agent runs: reported, not raised
    entry = cache.entries[f"uri:{idp}/jwks.json"]
    assert entry.error is not None
    assert "nested too deeply" in entry.error
    assert entry.fetches == {"ok": 0, "failed": 1}
