"""HAProxy configurations: one reverse proxy, and the sidecar pair.

One thread (`nbthread 1`; `threads` for bench/workers.py), one process. Upstream connections are
kept alive and shared (`http-reuse always`). Each request is logged (`option httplog`) to
stdout, as Weft's sidecar and Envoy log one line per request. TLS 1.3 only, X25519 and
TLS_AES_128_GCM_SHA256 only. HAProxy 2.6 cannot match a URI SAN without scripting, so both sides
check only that the peer's chain leads to the mesh CA (`verify required`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

TLS = "ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256"
# `curves` exists only on bind lines in 2.6; as a client OpenSSL 3 offers X25519 first anyway.
CURVES = "curves X25519"


def _config(root: Path, body: str, threads: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "haproxy.cfg"
    conf.write_text(
        textwrap.dedent(
            """\
            global
                nbthread {threads}
                maxconn 8000
                log stdout format raw local0
                pidfile {root}/haproxy.pid
            defaults
                mode http
                log global
                option httplog
                http-reuse always
                timeout connect 5s
                timeout client 300s
                timeout server 300s
                timeout http-keep-alive 300s
            """
        ).format(root=root, threads=threads)
        + textwrap.dedent(body)
    )
    return conf


def combined_pem(certs: Path) -> Path:
    """HAProxy wants the chain and the key in one file."""
    pem = certs / "haproxy.pem"
    if not pem.exists():
        pem.write_bytes((certs / "tls.crt").read_bytes() + (certs / "tls.key").read_bytes())
    return pem


def reverse_proxy(root: Path, port: int, app: int, threads: int = 1) -> Path:
    return _config(
        root,
        f"""\
        frontend in
            bind 127.0.0.1:{port}
            default_backend app
        backend app
            server app 127.0.0.1:{app}
        """,
        threads,
    )


def pair_a(root: Path, port: int, upstream: int, certs: Path, threads: int = 1) -> Path:
    return _config(
        root,
        f"""\
        frontend outbound
            bind 127.0.0.1:{port}
            default_backend api
        backend api
            server b 127.0.0.1:{upstream} ssl crt {combined_pem(certs)} ca-file {certs}/ca.crt \
verify required {TLS}
        """,
        threads,
    )


def pair_b(root: Path, port: int, app: int, certs: Path, threads: int = 1) -> Path:
    return _config(
        root,
        f"""\
        frontend inbound
            bind 127.0.0.1:{port} ssl crt {combined_pem(certs)} ca-file {certs}/ca.crt \
verify required {TLS} {CURVES}
            default_backend app
        backend app
            server app 127.0.0.1:{app}
        """,
        threads,
    )
