"""Make the seed corpora under `tests/fuzz/corpus/<target>/` (committed; run again to refresh).

    python -m tests.fuzz.seeds

Seeds are real inputs: every intent file of the template and of the broken-intent corpus, SPIFFE
IDs good and nearly good, certificates made with `cryptography` (a CA, a leaf with a SPIFFE ID,
an expired one, DER and PEM), webhook requests as GitHub sends them, and JWKS documents with
public keys made with `cryptography` (the Rust property harness, fastpath/core/tests/
fuzz_parsers.rs, starts from the same `jwks` folder). `ensure()` writes them
only where a target's folder is missing.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tests.fuzz import targets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"


def intent_seeds() -> list[bytes]:
    found = sorted((ROOT / "mesh-repo-template").rglob("*.yaml"))
    found += sorted((ROOT / "tests" / "corpus").rglob("*.yaml"))
    return [p.read_bytes() for p in found]


def spiffe_seeds() -> list[bytes]:
    return [
        b"spiffe://cluster.local/ns/a/sa/web",
        b"spiffe://example.org/ns/kube-system/sa/default",
        b"spiffe://a.b-c_d/ns/x/sa/y.z",
        b"spiffe://cluster.local/ns/a/sa/web/extra",
        b"spiffe://Cluster.local/ns/a/sa/web",
        b"spiffe://cluster.local/ns//sa/web",
        b"spiffe:///ns/a/sa/web",
        b"https://cluster.local/ns/a/sa/web",
        b"spiffe://cluster.local/ns/a/sa/web\n",
    ]


def _cert(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    spiffe_id: str | None = None,
    days: int = 365,
    start: datetime.datetime = targets.NOW - datetime.timedelta(days=1),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int(hashlib.sha256(subject.encode()).hexdigest()[:16], 16))
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if spiffe_id:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    return b.sign(issuer_key, hashes.SHA256())


def certificate_seeds() -> list[bytes]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fuzz CA", ca_key, ca_key, ca=True)
    leaf = _cert("web", ca_key, leaf_key, ca=False, spiffe_id="spiffe://fuzz.local/ns/a/sa/web")
    old = _cert("old CA", ca_key, ca_key, ca=True, days=1, start=targets.NOW.replace(year=2020))
    pem = serialization.Encoding.PEM
    return [
        ca.public_bytes(pem),
        leaf.public_bytes(pem),
        leaf.public_bytes(pem) + ca.public_bytes(pem),
        old.public_bytes(pem),
        ca.public_bytes(serialization.Encoding.DER),
        leaf.public_bytes(serialization.Encoding.DER),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    ]


def webhook_seeds() -> list[bytes]:
    body = b'{"ref":"refs/heads/main","after":"' + b"a" * 40 + b'"}'
    sig = targets.webhook.sign(targets.WEBHOOK_SECRET, body).encode()
    return [
        # signed by the first byte's choice: headers from here, signature added
        b"\x01User-Agent: GitHub-Hookshot/1\r\nX-GitHub-Event: push\r\n\r\n" + body,
        b"POST /hook HTTP/1.1\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nX-Hub-Signature-256: " + sig + b"\r\n\r\n" + body,
        b"POST /hook HTTP/1.1\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nX-Hub-Signature-256: sha256=00\r\n\r\n" + body,
        b"POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /hook HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"GET /hook HTTP/1.1\r\n\r\n",
        b"POST /other HTTP/1.0\r\n\r\n",
        b"POST /hook?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    ]  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def jwks_seeds() -> list[bytes]:
    """JWKS documents as identity providers publish them (public keys only), and the ones
    fastpath must refuse: a symmetric key, an unsupported curve, an `alg` that does not fit."""
    rsa_numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    n, e = rsa_numbers.public_numbers().n, rsa_numbers.public_numbers().e
    rsa_jwk = {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "n": _int(n), "e": _int(e)}
    ec_jwks = []
    for kid, curve, crv, size in (
        ("e1", ec.SECP256R1(), "P-256", 32),
        ("e2", ec.SECP384R1(), "P-384", 48),
    ):
        numbers = ec.generate_private_key(curve).public_key().public_numbers()
        ec_jwks.append({"kty": "EC", "kid": kid, "crv": crv,
                        "x": _b64(numbers.x.to_bytes(size, "big")),
                        "y": _b64(numbers.y.to_bytes(size, "big"))})  # fmt: skip
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = ed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ed_jwk = {"kty": "OKP", "crv": "Ed25519", "kid": "d1", "x": _b64(raw)}
    enc = {**rsa_jwk, "kid": "enc", "use": "enc", "alg": "RSA-OAEP"}
    docs: list[Any] = [
        {"keys": [rsa_jwk, *ec_jwks, ed_jwk]},
        {"keys": [rsa_jwk, enc]},
        {"keys": [ec_jwks[0]]},
        {"keys": [ed_jwk]},
        {"keys": [{"kty": "oct", "kid": "s", "k": _b64(b"a shared secret")}]},
        {"keys": [{**ec_jwks[0], "crv": "P-521"}]},
        {"keys": [{**ec_jwks[0], "alg": "RS256"}]},
        {"keys": [{**rsa_jwk, "alg": "HS256"}]},
        {"keys": []},
        {"keys": [{"kty": "RSA", "n": "", "e": ""}]},
    ]
    return [json.dumps(d).encode() for d in docs] + [b"[]", b'{"keys": {}}']


def admin_seeds() -> list[bytes]:
    """What calls the admin port: the kubelet, Prometheus, curl; and what it refuses."""
    return [
        b"GET /ready HTTP/1.1\r\nHost: 10.0.0.7:15021\r\nUser-Agent: kube-probe/1.37\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: text/plain;version=0.0.4\r\n"
        b"Accept-Encoding: gzip\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HEAD /app-health/app/readinessProbe?x=1 HTTP/1.0\r\n\r\n",
        b"POST /ready HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\r\nGET / HTTP/1.1\nX-A: 1\n folded\n\n",
    ]


SEEDS = {
    "intent": intent_seeds,
    "spiffe": spiffe_seeds,
    "certificate": certificate_seeds,
    "webhook": webhook_seeds,
    "jwks": jwks_seeds,
    "admin": admin_seeds,
}


def write(name: str) -> None:
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    for data in SEEDS[name]():
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def ensure() -> None:
    for name in SEEDS:
        if not (CORPUS / name).is_dir():
            write(name)


if __name__ == "__main__":
    for target in SEEDS:
        write(target)
