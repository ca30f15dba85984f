"""Private keys as Weft holds them: generated or loaded, checked for a supported curve, never shown.

`PrivateKey` is the only holder of raw key material. It signs certificate builders itself, so no
caller needs the raw key object; its repr names only the curve; it refuses to be pickled (a
multiprocessing queue or a cache must not copy a key by accident); and `pem()` is the one way out,
for a store to write the key to a 0600 file.
"""

from __future__ import annotations

from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, types

from reconciler.identity.errors import IdentityError

# Curves Weft signs with, and the hash each signs with. Only ECDSA: rustls verifies P-256 and
# P-384 signatures, a fleet of small ECDSA keys is cheap to issue, and one key family keeps the
# set of chains we must test small. RSA CAs (any size) are refused rather than half-supported.
CURVES: dict[str, tuple[str, type[hashes.SHA256 | hashes.SHA384]]] = {
    "secp256r1": ("P-256", hashes.SHA256),
    "secp384r1": ("P-384", hashes.SHA384),
}
SUPPORTED = "ECDSA P-256 or P-384"


class PrivateKey:
    """An ECDSA private key on a supported curve. Prints as its curve name only."""

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if key.curve.name not in CURVES:
            raise ValueError(f"unsupported key: {describe(key.public_key())}; use {SUPPORTED}")
        self._key = key

    @classmethod
    def generate(cls) -> PrivateKey:
        """A new P-256 key: what every workload gets and what a generated CA uses."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def curve(self) -> str:
        return CURVES[self._key.curve.name][0]

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def matches(self, certificate: x509.Certificate) -> bool:
        """Whether `certificate` carries this key's public half."""
        return _public_der(certificate.public_key()) == _public_der(self._key.public_key())

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, CURVES[self._key.curve.name][1]())

    def pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted: for a store to write with mode 0600, and for nothing else."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"<PrivateKey {self.curve}, not shown>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a PrivateKey is not pickled: write it with a store instead")


class UnsupportedKeyError(IdentityError):
    """A key Weft will not use; the message says what the key is and what is accepted."""


def load(data: bytes, source: str) -> PrivateKey:
    """Read a PEM private key; errors name `source` and the key's type, never its content."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UnsupportedKeyError(
            f"{source} is an encrypted private key; provide it unencrypted"
        ) from None
    except ValueError:
        raise UnsupportedKeyError(f"{source} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in CURVES:
        raise UnsupportedKeyError(
            f"unsupported key: {describe(key.public_key())}; Weft accepts {SUPPORTED}"
        )
    return PrivateKey(key)


def describe(public_key: types.PublicKeyTypes | types.CertificatePublicKeyTypes) -> str:
    """A key's type for messages: 'RSA 2048 bits', 'ECDSA P-521', 'Ed25519'."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size} bits"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        name = public_key.curve.name
        known = {"secp521r1": "P-521", **{k: v[0] for k, v in CURVES.items()}}
        return f"ECDSA {known.get(name, name)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def _public_der(public_key: types.PublicKeyTypes | types.CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
