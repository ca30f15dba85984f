"""The keys of the JWT issuers a ProxyConfig names, fetched or read by the agent.

fastpath verifies tokens with the keys inside its config and never does I/O for them on a
request; this module fills them in. Each source (an issuer's `jwksUri` or `jwksFile`, or for an
issuer that names neither its OIDC discovery document, whose `jwks_uri` is then fetched) is
looked at again every `refresh_seconds`, so a key the identity provider rotates in reaches
fastpath as an ordinary config reload. A failed fetch keeps the keys already held (an IdP
outage must not refuse every user whose token those keys still verify) and is reported as
stale; a document fastpath would refuse is treated as a failed fetch, so it cannot block the
rest of a config.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from reconciler import _native

REFRESH_SECONDS = 300.0
RETRY_SECONDS = 5.0  # after a failure: soon, but not on every poll
FETCH_TIMEOUT_SECONDS = 5.0
MAX_DOCUMENT_BYTES = 1 << 20


def sources(config: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Every issuer whose keys come from outside the config, with its source ("uri:...",
    "file:..." or "issuer:..." for discovery)."""
    # Sidecar ports, and an ingress gateway's listeners (a RequestAuthentication `to: gateways`).
    for port in [*config.get("inbound", ()), *config.get("gateway", ())]:
        for issuer in (port.get("authentication") or {}).get("issuers", ()):
            if issuer.get("jwksUri"):
                yield issuer, "uri:" + issuer["jwksUri"]
            elif issuer.get("jwksFile"):
                yield issuer, "file:" + issuer["jwksFile"]
            elif issuer.get("discovery"):
                yield issuer, "issuer:" + issuer["issuer"]


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _https_or_loopback(url: str) -> bool:
    """The rule validate applies to the intent, applied to a URL an IdP hands out: keys fetched
    in the clear could be swapped by anyone on the path."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme == "https" or (
        parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS
    )


def discover(issuer: str) -> str:
    """The `jwks_uri` of `issuer`'s OpenID Connect discovery document. The document must name
    the issuer exactly (Discovery 1.0 §4.3): one that names another would have the mesh trust
    keys published for someone else."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = _loads(_fetch_uri(url), f"{url}: not a discovery document")
    if not isinstance(document, dict):
        raise ValueError(f"{url}: not a discovery document")
    if document.get("issuer") != issuer:
        raise ValueError(f"{url} names issuer {document.get('issuer')!r}, not {issuer!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not _https_or_loopback(jwks_uri):
        raise ValueError(f"{url}: jwks_uri {jwks_uri!r} is not an https URL")
    return jwks_uri


def _loads(raw: bytes, what: str) -> Any:
    """JSON from an IdP. Nesting too deep for the decoder raises RecursionError, which the
    refresh loop (it expects OSError or ValueError) would not catch: refused as a ValueError."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None


def _fetch_uri(uri: str) -> bytes:
    # Imported here: urllib.request brings `ssl`, and OpenSSL's libraries cost a sidecar that
    # never fetches (most: no RequestAuthentication, or keys given inline) ~4.5 MB of RSS.
    import urllib.request  # noqa: PLC0415

    # The platform's trust store (SSL_CERT_FILE honoured), hostname checked: the default context.
    req = urllib.request.Request(uri, headers={"Accept": "application/json"})
    with urllib.request.urlopen(
        req, timeout=FETCH_TIMEOUT_SECONDS
    ) as resp:  # https, or http on loopback: validated
        body: bytes = resp.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
    return body


def read(source: str) -> dict[str, Any]:
    """A JWKS document from its source, checked the way fastpath will read it."""
    kind, _, where = source.partition(":")
    if kind == "issuer":
        raw = _fetch_uri(discover(where))
    else:
        raw = _fetch_uri(where) if kind == "uri" else Path(where).read_bytes()
    return parse(raw)


def parse(raw: bytes) -> dict[str, Any]:
    """A fetched or read JWKS document, checked the way fastpath will read it; ValueError (with
    the reason) for anything else."""
    document = _loads(raw, "not a JWKS document")
    if not isinstance(document, dict):
        raise ValueError("not a JWKS document")
    _native.check_jwks(json.dumps(document))
    return document


@dataclasses.dataclass
class Entry:
    document: dict[str, Any] | None = None
    fetched_at: float | None = None  # wall clock, for status
    next_at: float = 0.0  # monotonic
    error: str | None = None
    fetches: dict[str, int] = dataclasses.field(default_factory=lambda: {"ok": 0, "failed": 0})

    @property
    def stale(self) -> bool:
        """The last look failed: the keys in force (if any) may be out of date."""
        return self.error is not None


class Cache:
    def __init__(
        self,
        refresh_seconds: float = REFRESH_SECONDS,
        reader: Callable[[str], dict[str, Any]] = read,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.reader, self.clock = reader, clock
        self.entries: dict[str, Entry] = {}

    def refresh(self, wanted: Iterable[str]) -> None:
        """Look at every wanted source that is due; forget sources no longer wanted."""
        wanted = set(wanted)
        for gone in self.entries.keys() - wanted:
            del self.entries[gone]
        now = self.clock()
        for source in sorted(wanted):
            entry = self.entries.setdefault(source, Entry())
            if now < entry.next_at:
                continue
            try:
                entry.document = self.reader(source)
            except (OSError, ValueError) as e:
                entry.error = f"{type(e).__name__}: {e}"
                entry.fetches["failed"] += 1
                entry.next_at = now + min(RETRY_SECONDS, self.refresh_seconds)
            else:
                entry.error = None
                entry.fetched_at = time.time()
                entry.fetches["ok"] += 1
                entry.next_at = now + self.refresh_seconds

    def effective(self, config: dict[str, Any]) -> dict[str, Any]:
        """`config` with refreshed keys filled in; the config itself when it names no source."""
        found = list(sources(config))
        if not found:
            return config
        self.refresh(source for _, source in found)
        filled = copy.deepcopy(config)
        for issuer, source in sources(filled):
            document = self.entries[source].document
            if document is not None:
                issuer["jwks"] = document
        return filled

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            source: {
                "keys": len((e.document or {}).get("keys", ())),
                "fetchedAt": e.fetched_at,
                "stale": e.stale,
                "error": e.error,
            }
            for source, e in sorted(self.entries.items())
        }
