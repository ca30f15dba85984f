"""A CA the user provides as PEM files: every check it must pass before Weft issues from it.

The checks run before anything is written, and all of them run, so one refusal lists every
problem with the files (like `weft validate`). The certificate file holds the CA certificate
first and then the chain above it, ending with the self-signed root the trust bundle will hold;
a root CA is a file with one certificate.
"""

from __future__ import annotations

import datetime
import itertools

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from reconciler.identity import keys
from reconciler.identity.authority import Authority
from reconciler.identity.clock import timestamp
from reconciler.identity.errors import RefusedCAError
from reconciler.identity.keys import PrivateKey

# What cryptography raises for a certificate it cannot read; several are not ValueErrors, and
# fields are parsed when first read, so any check can meet one (all found by fuzzing).
UNREADABLE = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def load(
    cert_pem: bytes, key_pem: bytes, now: datetime.datetime, cert_name: str, key_name: str
) -> Authority:
    """The Authority in these files, or `RefusedCAError` naming every problem found."""
    source = f"{cert_name} and {key_name}"
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
    except UNREADABLE:
        chain = ()
    if not chain:
        raise RefusedCAError(source, [f"{cert_name} holds no PEM certificate"])
    try:
        problems = check_chain(chain, now)
    except UNREADABLE as e:
        # cryptography parses fields when they are first read, so a malformed name or
        # extension raises only here (found by fuzzing: tests/fuzz/crashes/certificate/).
        problems = [f"{cert_name} holds a certificate that cannot be parsed ({e})"]
    key: PrivateKey | None = None
    try:
        key = keys.load(key_pem, key_name)
    except keys.UnsupportedKeyError as e:
        problems.append(str(e))
    try:
        matches = key is None or key.matches(chain[0])
    except UNREADABLE:  # a public key of no known algorithm (found by fuzzing)
        problems.append("the certificate's public key cannot be read: unknown or malformed")
    else:
        if not matches:
            problems.append(
                "the certificate does not match the key: its public key is not the key's "
                "public half"
            )
    if problems:
        raise RefusedCAError(source, problems)
    assert key is not None
    return Authority(chain, key)


def check_chain(chain: tuple[x509.Certificate, ...], now: datetime.datetime) -> list[str]:
    """Problems with the CA certificate and the chain above it; empty when Weft may use it."""
    # The key type is checked on the private key (`keys.load`); a certificate whose key differs
    # from it fails the match, so checking the certificate's key too would only repeat a message.
    problems = _not_a_ca(chain[0])
    for position, cert in enumerate(chain):
        what = "the certificate" if position == 0 else f"chain certificate {position + 1}"
        if now > cert.not_valid_after_utc:
            problems.append(f"{what} expired at {timestamp(cert.not_valid_after_utc)}")
        elif now < cert.not_valid_before_utc:
            problems.append(f"{what} is not valid until {timestamp(cert.not_valid_before_utc)}")
    for position, (child, parent) in enumerate(itertools.pairwise(chain)):
        try:
            child.verify_directly_issued_by(parent)
        except (*UNREADABLE, InvalidSignature):
            problems.append(
                f"certificate {position + 1} is not signed by certificate {position + 2}; "
                "list the CA first, then each issuer up to the root"
            )
    if not _self_signed(chain[-1]):
        problems.append(
            "the chain does not end with a self-signed root; append the root certificate "
            "so the trust bundle has an anchor"
        )
    return problems


def _not_a_ca(ca: x509.Certificate) -> list[str]:
    try:
        extensions = ca.extensions
    except UNREADABLE as e:  # read lazily: a malformed one raises here (found by fuzzing)
        return [f"the certificate's extensions cannot be read ({e})"]
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return ["the certificate is not a CA: it has no basicConstraints extension"]
    if not constraints.ca:
        return ["the certificate is not a CA: basicConstraints says CA:FALSE"]
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return []
    if not usage.key_cert_sign:
        return ["the certificate may not sign certificates: its keyUsage lacks keyCertSign"]
    return []


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (*UNREADABLE, InvalidSignature):
        return False
    return True
