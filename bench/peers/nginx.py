"""nginx configurations: the benchmark's backend, the direct mTLS server of the handshake
baseline, and nginx as the proxy peer (one reverse proxy; the sidecar pair).

Every nginx here runs as one process (`master_process off`, one worker), so its pid is the process
that does the work; with `workers` > 1 (bench/workers.py) a master forks them. As a proxy it
writes an access log (buffered, as Envoy's is), keeps upstream connections alive (`keepalive`
pool, HTTP/1.1, no `Connection` header passed on) and speaks TLS 1.3 with X25519 and
TLS_AES_128_GCM_SHA256 only. nginx cannot match a URI SAN, so it checks only that the peer's chain
leads to the mesh CA; as a client (A) it cannot check a chain without also checking a DNS name the
SPIFFE certificates do not carry, so A does not verify B.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

TLS_SERVER = """\
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;"""


def _main(root: Path, http: str, workers: int = 1) -> str:
    # Several workers need a master to fork them; it stays in the foreground (`daemon off`),
    # so the pid started is still the one to stop and the workers are its children.
    processes = (
        "master_process off;\nworker_processes 1;"
        if workers == 1
        else f"master_process on;\nworker_processes {workers};"
    )
    return (
        textwrap.dedent(
            f"""\
        daemon off;
        @PROCESSES@
        pid {root}/nginx.pid;
        error_log {root}/error.log warn;
        events {{ worker_connections 8192; }}
        http {{
            client_body_temp_path {root}/body;
            proxy_temp_path {root}/proxy;
            keepalive_requests 10000000;
            keepalive_timeout 300s;
            default_type text/plain;
        """
        )
        + textwrap.indent(textwrap.dedent(http), "    ")
        + "}\n"
    ).replace("@PROCESSES@", processes)


def _write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(text)
    return conf


def backend(root: Path, port: int, body: str, files: Path) -> Path:
    """The app every scenario ends at: `return 200` with a small fixed body at `/`, and the
    files under `files` (the bulk transfer's large body) by path, with sendfile."""
    return _write(
        root,
        _main(
            root,
            f"""\
            access_log off;
            sendfile on;
            server {{
                listen 127.0.0.1:{port} reuseport backlog=4096;
                location = / {{ return 200 "{body.strip()}\\n"; }}
                location / {{ root {files}; }}
            }}
            """,
        ),
    )


def mirror_backend(root: Path, port: int, body: str) -> Path:
    """The mirror target of the resilient scenarios: answers like the backend and logs the
    Host of each copy it receives (one line each, flushed within 250 ms), so the benchmark can
    count the copies that arrived and check they say they are copies (`-shadow`)."""
    return _write(
        root,
        _main(
            root,
            f"""\
            log_format hosts '$http_host';
            access_log {root}/mirror.log hosts buffer=64k flush=250ms;
            server {{
                listen 127.0.0.1:{port} reuseport backlog=4096;
                location / {{ return 200 "{body.strip()}\\n"; }}
            }}
            """,
        ),
    )


def tls_server(root: Path, port: int, body: str, certs: Path) -> Path:
    """The handshake scenario's direct baseline: nginx terminating mTLS (client certificate
    required) and answering itself, with no upstream."""
    return _write(
        root,
        _main(
            root,
            f"""\
            access_log off;
            server {{
                listen 127.0.0.1:{port} ssl backlog=4096;
                ssl_certificate {certs}/tls.crt;
                ssl_certificate_key {certs}/tls.key;
                ssl_client_certificate {certs}/ca.crt;
                ssl_verify_client on;
            {TLS_SERVER}
                location / {{ return 200 "{body.strip()}\\n"; }}
            }}
            """,
        ),
    )


def _log(root: Path) -> str:
    return f"access_log {root}/access.log combined buffer=64k flush=1s;"


def _upstream(port: int) -> str:
    return f"upstream up {{ server 127.0.0.1:{port}; keepalive 64; keepalive_requests 10000000; }}"


_PASS = """\
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;"""


def reverse_proxy(root: Path, port: int, app: int, workers: int = 1) -> Path:
    """One proxy: plaintext HTTP/1.1 in, keep-alive HTTP/1.1 to the app."""
    return _write(
        root,
        _main(
            root,
            f"""\
            {_log(root)}
            {_upstream(app)}
            server {{
                listen 127.0.0.1:{port} backlog=4096;
                location / {{
                    proxy_pass http://up;
            {_PASS}
                }}
            }}
            """,
            workers,
        ),
    )


def pair_a(root: Path, port: int, upstream: int, certs: Path, workers: int = 1) -> Path:
    """Outbound: plaintext from the app, mTLS to B presenting a/web's certificate."""
    return _write(
        root,
        _main(
            root,
            f"""\
            {_log(root)}
            {_upstream(upstream)}
            server {{
                listen 127.0.0.1:{port} backlog=4096;
                location / {{
                    proxy_pass https://up;
            {_PASS}
                    proxy_ssl_certificate {certs}/tls.crt;
                    proxy_ssl_certificate_key {certs}/tls.key;
                    proxy_ssl_protocols TLSv1.3;
                    proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
                    proxy_ssl_conf_command Groups X25519;
                    proxy_ssl_session_reuse off;
                }}
            }}
            """,
            workers,
        ),
    )


def pair_b(root: Path, port: int, app: int, certs: Path, workers: int = 1) -> Path:
    """Inbound: mTLS with a client certificate from the mesh CA required, then the app."""
    return _write(
        root,
        _main(
            root,
            f"""\
            {_log(root)}
            {_upstream(app)}
            server {{
                listen 127.0.0.1:{port} ssl backlog=4096;
                ssl_certificate {certs}/tls.crt;
                ssl_certificate_key {certs}/tls.key;
                ssl_client_certificate {certs}/ca.crt;
                ssl_verify_client on;
            {TLS_SERVER}
                location / {{
                    proxy_pass http://up;
            {_PASS}
                }}
            }}
            """,
            workers,
        ),
    )
