"""Certificates Weft issues from its generated root, checked by the real `openssl`.

Everything is generated at test time (no key is committed) and verified at the current time,
since `openssl verify` reads the real clock.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from reconciler.identity import authority, clock, workload
from reconciler.identity.spiffe import SpiffeId

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

SPIFFE = SpiffeId("test.local", "b", "api")
DAY = datetime.timedelta(hours=24)


def openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def issued(tmp_path: Path) -> tuple[authority.Authority, workload.WorkloadCertificate]:
    now = clock.system()
    ca = authority.generate("test.local", now)
    return ca, ca.issuer().issue(SPIFFE, DAY, now)


@pytest.mark.parametrize("purpose", ["sslserver", "sslclient"])
def test_leaf_verifies_against_the_generated_root(
    issued: tuple[authority.Authority, workload.WorkloadCertificate], tmp_path: Path, purpose: str
) -> None:
    ca, cert = issued
    root = write(tmp_path / "ca.crt", workload.pem([ca.root]))
    leaf = write(tmp_path / "tls.crt", cert.chain_pem())
    assert openssl("verify", "-purpose", purpose, "-CAfile", root, leaf).strip() == f"{leaf}: OK"


def test_leaf_carries_the_spiffe_id_and_usages(
    issued: tuple[authority.Authority, workload.WorkloadCertificate], tmp_path: Path
) -> None:
    _, cert = issued
    text = openssl("x509", "-noout", "-text", "-in", write(tmp_path / "l.crt", cert.chain_pem()))
    assert (
        "X509v3 Subject Alternative Name: critical\n                URI:spiffe://test.local/ns/b/sa/api\n"
        in text
    )
    assert "X509v3 Basic Constraints: critical\n                CA:FALSE\n" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature\n" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "X509v3 Authority Key Identifier" in text
    assert "Subject: \n" in text or "Subject:\n" in text  # minimal: the SAN is the identity
    assert "ASN1 OID: prime256v1" in text


def test_leaf_is_the_only_uri_and_not_a_ca(
    issued: tuple[authority.Authority, workload.WorkloadCertificate],
) -> None:
    ca, cert = issued
    san = cert.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(SPIFFE)]
    assert san.value.get_values_for_type(x509.DNSName) == []
    aki = cert.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest
    assert cert.intermediates == ()  # a root signs directly: tls.crt is the leaf alone


def test_validity_is_the_lifetime_backdated_for_clock_skew() -> None:
    now = datetime.datetime(2030, 5, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
    ca = authority.generate("test.local", now)
    leaf = ca.issuer().issue(SPIFFE, datetime.timedelta(hours=6), now).certificate
    whole = now.replace(microsecond=0)
    assert leaf.not_valid_before_utc == whole - datetime.timedelta(minutes=1)
    assert leaf.not_valid_after_utc == whole + datetime.timedelta(hours=6)


def test_a_leaf_never_outlives_its_ca() -> None:
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    ca = authority.generate("test.local", now, lifetime=datetime.timedelta(hours=2))
    leaf = ca.issuer().issue(SPIFFE, DAY, now).certificate
    assert leaf.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_generated_root_is_a_pathlen_0_ca(tmp_path: Path) -> None:
    ca = authority.generate("test.local", clock.system())
    text = openssl(
        "x509", "-noout", "-text", "-in", write(tmp_path / "ca.crt", workload.pem([ca.root]))
    )
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0\n" in text
    assert "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign\n" in text
    assert "X509v3 Subject Key Identifier" in text
    assert "Subject: O = Weft, CN = Weft root CA for test.local" in text
    assert "ASN1 OID: prime256v1" in text


def test_a_certificate_from_another_root_is_rejected(
    issued: tuple[authority.Authority, workload.WorkloadCertificate], tmp_path: Path
) -> None:
    _, cert = issued
    other = authority.generate("test.local", clock.system())
    root = write(tmp_path / "other.crt", workload.pem([other.root]))
    leaf = write(tmp_path / "tls.crt", cert.chain_pem())
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", root, leaf], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "unable to get local issuer certificate" in done.stdout + done.stderr
