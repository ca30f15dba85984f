"""A test identity provider: signing keys made at test time, JWTs signed with them, and a JWKS
served over real HTTPS on loopback (rotatable, stoppable).

Tokens are signed here with `cryptography` directly (JWS compact form, RFC 7515), so the
verifier under test shares no code with the signer.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.pki import CA


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int, size: int | None = None) -> str:
    length = size or (n.bit_length() + 7) // 8
    return b64url(n.to_bytes(length, "big"))


class SigningKey:
    """An RS256 or ES256 key with its kid, and the JWK that publishes it."""

    def __init__(self, kid: str, alg: str = "RS256") -> None:
        self.kid, self.alg = kid, alg
        if alg == "RS256":
            self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pub = self.rsa.public_key().public_numbers()
            self.jwk: dict[str, Any] = {
                "kty": "RSA",
                "kid": kid,
                "alg": alg,
                "use": "sig",
                "n": _uint(pub.n),
                "e": _uint(pub.e),
            }
        else:
            self.ec = ec.generate_private_key(ec.SECP256R1())
            pub_ec = self.ec.public_key().public_numbers()
            self.jwk = {
                "kty": "EC",
                "kid": kid,
                "crv": "P-256",
                "x": _uint(pub_ec.x, 32),
                "y": _uint(pub_ec.y, 32),
            }

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        ).encode()
        if self.alg == "RS256":
            signature = self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input.decode() + "." + b64url(signature)


def claims(issuer: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "sub": "alice", "aud": "orders", "iat": now, "exp": now + 600, **extra}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: JwksServer

    def do_GET(self) -> None:  # http.server's name
        body = json.dumps({"keys": [k.jwk for k in self.server.keys]}).encode()
        self.server.fetches += 1
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class JwksServer(http.server.ThreadingHTTPServer):
    """The IdP's JWKS endpoint: HTTPS for `localhost` from its own CA (`trust` names the file a
    client needs in SSL_CERT_FILE)."""

    daemon_threads = True

    def __init__(self, tmp: Path, keys: list[SigningKey]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.keys, self.fetches = keys, 0
        ca = CA.create("test IdP CA")
        site = ca.issue_server("localhost")
        (tmp / "idp.crt").write_bytes(site.chain)
        (tmp / "idp.key").write_bytes(site.key)
        self.trust = tmp / "idp-roots.pem"
        self.trust.write_bytes(ca.pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / "idp.crt", tmp / "idp.key")
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def uri(self) -> str:
        return f"https://localhost:{self.server_address[1]}/jwks"

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.shutdown()
            self.server_close()
