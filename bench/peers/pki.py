"""The SPIFFE certificates every peer of a benchmark uses: one fresh Weft root CA (ECDSA
P-256) and one workload certificate each for a/web (the caller's sidecar) and b/api (the
callee's), as `tls.crt` (chain), `tls.key` and `ca.crt` per workload folder."""

from __future__ import annotations

import datetime
from pathlib import Path

from reconciler.identity import authority, workload
from reconciler.identity.spiffe import SpiffeId

TRUST_DOMAIN = "bench.local"
WEB_ID = f"spiffe://{TRUST_DOMAIN}/ns/a/sa/web"
API_ID = f"spiffe://{TRUST_DOMAIN}/ns/b/sa/api"


def write_certs(root: Path) -> dict[str, Path]:
    """A fresh Weft root CA and one workload certificate each for a/web and b/api."""
    now = datetime.datetime.now(datetime.UTC)
    ca = authority.generate(TRUST_DOMAIN, now)
    dirs = {}
    for name, (ns, sa) in {"web": ("a", "web"), "api": ("b", "api")}.items():
        cert = ca.issuer().issue(SpiffeId(TRUST_DOMAIN, ns, sa), workload.DEFAULT_LIFETIME, now)
        folder = root / "certs" / name
        folder.mkdir(parents=True)
        (folder / "tls.crt").write_bytes(cert.chain_pem())
        (folder / "tls.key").write_bytes(cert.key.pem())
        (folder / "ca.crt").write_bytes(workload.pem([ca.root]))
        dirs[name] = folder
    return dirs
