"""Certificate authorities Weft issues from, and the down-scoped `Issuer` handed to callers.

An `Authority` holds a CA certificate, the chain above it up to a self-signed root, and the CA
key. It never leaves the identity package: callers get an `Issuer`, which can issue workload
certificates and show the CA's public certificates, and has no method that returns the key.
(Python cannot make that a hard wall; the API and the `PrivateKey` type that will not print or
pickle are what keep the key inside.)
"""

from __future__ import annotations

import datetime
import hashlib
import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from reconciler.identity import workload
from reconciler.identity.clock import normalise, timestamp
from reconciler.identity.errors import IssuanceError
from reconciler.identity.keys import PrivateKey
from reconciler.identity.spiffe import SpiffeId

log = logging.getLogger(__name__)

# A generated root outlives any workload certificate by far; rotating it is `weft ca rotate`.
DEFAULT_CA_LIFETIME = datetime.timedelta(days=3650)


class Authority:
    """A CA: its certificate, the chain above it to the root, and its key (never shown)."""

    __slots__ = ("_key", "ca_id", "chain", "key_id")

    def __init__(self, chain: tuple[x509.Certificate, ...], key: PrivateKey) -> None:
        if not chain or not key.matches(chain[0]):
            raise ValueError("an Authority needs its certificate first and the matching key")
        self.chain = chain
        self._key = key
        self.ca_id = fingerprint(chain[0])
        self.key_id = workload.key_id(chain[0])

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor that goes into the bundle (the CA itself when it is a root)."""
        return self.chain[-1]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What a workload sends after its leaf: every chain certificate except the root."""
        return self.chain[:-1]

    @property
    def not_after(self) -> datetime.datetime:
        return min(c.not_valid_after_utc for c in self.chain)

    def issuer(self) -> Issuer:
        return Issuer(self)

    def key_pem(self) -> bytes:
        """For a store to persist the CA key; nothing outside the identity package calls this."""
        return self._key.pem()

    def issue(
        self, spiffe_id: SpiffeId, lifetime: datetime.timedelta, now: datetime.datetime
    ) -> workload.WorkloadCertificate:
        now = normalise(now)
        if now >= self.not_after:
            raise IssuanceError(
                f"the issuing CA {self.ca_id} expired at {timestamp(self.not_after)}; "
                "start a rollover with `weft ca rotate`"
            )
        key = PrivateKey.generate()
        # A leaf never outlives its chain: a peer would reject it after the CA expires anyway.
        not_after = min(now + lifetime, self.not_after)
        leaf = self._key.sign(
            workload.template(
                spiffe_id, key.public_key(), self.certificate, now - workload.CLOCK_SKEW, not_after
            )
        )
        log.info(
            "issued %s serial=%x notAfter=%s issuer=%s",
            spiffe_id,
            leaf.serial_number,
            timestamp(not_after),
            self.ca_id,
        )
        return workload.WorkloadCertificate(spiffe_id, leaf, self.intermediates, key)

    def __repr__(self) -> str:
        return f"<Authority {self.ca_id} {self.certificate.subject.rfc4514_string()}>"


class Issuer:
    """What a caller may do with a CA: issue workload certificates and read public certificates."""

    __slots__ = ("_authority",)

    def __init__(self, authority: Authority) -> None:
        self._authority = authority

    @property
    def ca_id(self) -> str:
        return self._authority.ca_id

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self._authority.chain

    def issue(
        self, spiffe_id: SpiffeId, lifetime: datetime.timedelta, now: datetime.datetime
    ) -> workload.WorkloadCertificate:
        return self._authority.issue(spiffe_id, lifetime, now)

    def __repr__(self) -> str:
        return f"<Issuer {self.ca_id}>"


def generate(
    trust_domain: str, now: datetime.datetime, lifetime: datetime.timedelta = DEFAULT_CA_LIFETIME
) -> Authority:
    """A new self-signed P-256 root that signs workload certificates directly (pathlen 0)."""
    now = normalise(now)
    key = PrivateKey.generate()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Weft"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Weft root CA for {trust_domain}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # Backdated like the leaves it signs, so they never predate their issuer.
    not_before = now - workload.CLOCK_SKEW
    certificate = key.sign(
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_SIGNS_CERTIFICATES_AND_CRLS, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    )
    authority = Authority((certificate,), key)
    log.info("generated root CA %s for %s", authority.ca_id, trust_domain)
    return authority


def fingerprint(certificate: x509.Certificate) -> str:
    """A CA's id: the first 16 hex digits of the SHA-256 of its DER (short, stable, public)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]


_SIGNS_CERTIFICATES_AND_CRLS = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
