"""Type stub for the fastpath extension module (Rust, built by maturin)."""

from typing import final

__all__ = [
    "BindError",
    "CertificateError",
    "ConfigError",
    "Proxy",
    "authorize",
    "check_edge_certificate",
    "check_edge_client_ca",
    "check_jwks",
    "check_route_regex",
    "normalize_path",
    "start",
    "version",
]

class ConfigError(ValueError):
    """A ProxyConfig or listener set was refused."""

class CertificateError(ValueError):
    """Certificates or the trust bundle were refused."""

class BindError(OSError):
    """A listener could not be bound."""

@final
class Proxy:
    """A running proxy. Its own tokio threads serve traffic; these methods only steer it."""

    def reload(self, config: str) -> str:
        """Swap in a new ProxyConfig; return its revision. On error the old config stays."""
    def rotate(self, cert_chain: bytes, key: bytes, bundle: bytes) -> None:
        """Swap in a new certificate chain, key and trust bundle (PEM)."""
    def stats(self) -> str:
        """Cumulative request and TCP counters, as JSON."""
    def clusters(self) -> str:
        """The upstreams in force: endpoints, ejections, circuit breakers and mirrors, as JSON."""
    def drain_spans(self, max: int = 1024) -> str:
        """Up to `max` finished spans, oldest first, as a JSON list."""
    def record_spans(self, on: bool) -> None:
        """Keep finished spans for `drain_spans` (the default) or not."""
    def drain_access_log(self, max: int = 4096) -> str:
        """Up to `max` access log entries, oldest first, as a JSON list."""
    def drain_access_log_lines(self, max: int = 4096) -> str:
        """Up to `max` access log entries as JSON lines, each beginning "event":"access"."""
    def bound(self) -> dict[str, str]:
        """Where each listener is bound."""
    def revision(self) -> str:
        """The revision of the config in force."""
    def shutdown(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting; let in-flight requests finish for up to `drain_timeout` seconds."""

def start(
    config: str,
    cert_chain: bytes,
    key: bytes,
    bundle: bytes,
    listeners: str,
    workers: int = 1,
) -> Proxy:
    """Start a proxy; every listener is bound before this returns."""

def version() -> str:
    """The fastpath crate version this extension was built from."""

def check_jwks(jwks: str) -> int:
    """The number of signing keys in a JWKS (JSON); ValueError with a reason if fastpath would
    refuse it (symmetric keys, unsupported curves, not a JWKS)."""

def check_edge_certificate(chain: bytes, key: bytes) -> list[str]:
    """The DNS names of a gateway certificate (PEM chain and key); ValueError naming the part
    (tls.crt, tls.key) a gateway listener would refuse, never the key's bytes."""

def check_edge_client_ca(pem: bytes) -> int:
    """The number of CAs in an edge-mTLS client CA bundle; ValueError if a listener refuses it."""

def check_route_regex(pattern: str) -> None:
    """Raise ValueError with a one-line reason if the data plane cannot compile `pattern`."""

def normalize_path(path: str, escaped_slashes: str) -> str:
    """The sidecar's normal form of `path`; ValueError with the reason if it has none."""

def authorize(
    config: str,
    port: int,
    peer: str | None,
    method: str | None = None,
    path: str | None = None,
) -> tuple[bool, str]:
    """fastpath's inbound decision for one request on `port` of ProxyConfig `config`: whether
    it is allowed, and the policy that decided. `peer` None: no identity; `method` and `path`
    None: a TCP connection. The path is normalized and its query dropped, as inbound does.
    ValueError for a peer outside the config's trust domain, or a path the sidecar answers 400."""
