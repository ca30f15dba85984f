"""Workload certificates (X.509-SVIDs): what one is made of, and the template every one follows.

The template is fixed by what a sidecar needs and nothing more: the SPIFFE ID as the only URI SAN
(marked critical, because the subject is empty, as RFC 5280 requires), digitalSignature for the
TLS handshake, serverAuth and clientAuth because every sidecar is both, CA:FALSE so a leaked leaf
cannot mint others, and the issuer's key id so a chain is found without trying every CA.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from reconciler.identity.errors import IssuanceError
from reconciler.identity.keys import PrivateKey
from reconciler.identity.spiffe import SpiffeId

# notBefore is set this far in the past so a peer whose clock runs a little behind ours still
# accepts a certificate issued a moment ago.
CLOCK_SKEW = datetime.timedelta(minutes=1)
DEFAULT_LIFETIME = datetime.timedelta(hours=24)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """A leaf, the intermediates a peer needs to chain it to a trusted root, and its key."""

    spiffe_id: SpiffeId
    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    key: PrivateKey  # its repr is the curve name only

    def chain_pem(self) -> bytes:
        """`tls.crt`: the leaf first, then each intermediate, as TLS servers send them."""
        return pem((self.certificate, *self.intermediates))


def pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def template(
    spiffe_id: SpiffeId,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    """The unsigned leaf; the caller signs it with the issuer's key."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_DIGITAL_SIGNATURE, critical=True)
        .add_extension(_CLIENT_AND_SERVER, critical=False)
        .add_extension(authority_key_id(issuer), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI naming the issuer's SKI when it has one (it must match), else derived from its key."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def key_id(certificate: x509.Certificate) -> bytes:
    """The key identifier a leaf's AKI carries for this issuer (see `authority_key_id`)."""
    identifier = authority_key_id(certificate).key_identifier
    assert identifier is not None  # both constructors always set it
    return identifier


def issuer_key_id(leaf: x509.Certificate) -> bytes | None:
    try:
        return leaf.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def spiffe_id_of(leaf: x509.Certificate) -> SpiffeId | None:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except IssuanceError:
        return None


_DIGITAL_SIGNATURE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CLIENT_AND_SERVER = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
