"""A CA the user provides: what is refused (with the exact message) and what is accepted.

Accepted CAs — a P-256 or P-384 root, or an intermediate with its chain — issue certificates
that the real `openssl verify` accepts. A refusal leaves the state directory byte for byte as it
was, through the library and through `weft ca`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from reconciler import cli, identity
from reconciler.compiler.identities import Identity
from reconciler.identity import clock, user_ca
from reconciler.identity.spiffe import SpiffeId

NOW = clock.normalise(clock.system())
DAY = datetime.timedelta(days=1)
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def p256() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


@dataclasses.dataclass
class Spec:
    """How to build one test certificate; defaults make a valid root CA."""

    key: Key = dataclasses.field(default_factory=p256)
    name: str = "Test Root"
    ca: bool | None = True  # None: no basicConstraints at all
    key_cert_sign: bool = True
    not_before: datetime.datetime = NOW - DAY
    not_after: datetime.datetime = NOW + 365 * DAY


def build(spec: Spec, issuer: tuple[x509.Certificate, Key] | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(spec.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(spec.key.public_key()), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=spec.key_cert_sign,
                crl_sign=spec.key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if spec.ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=spec.ca, path_length=None), critical=True
        )
    signer = issuer[1] if issuer else spec.key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def pem_of(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def files(tmp_path: Path, cert: bytes, key: bytes) -> tuple[Path, Path]:
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "ca.key").write_bytes(key)
    return tmp_path / "ca.crt", tmp_path / "ca.key"


def refusal(tmp_path: Path, cert: bytes, key: bytes) -> list[str]:
    cert_path, key_path = files(tmp_path, cert, key)
    with pytest.raises(identity.RefusedCAError) as refused:
        identity.ca.read_provided(cert_path, key_path, NOW)
    assert str(refused.value).startswith(f"refusing the CA in {cert_path} and {key_path}: ")
    return list(refused.value.problems)


def root_with(spec: Spec) -> tuple[bytes, bytes]:
    return pem_of(build(spec)), key_pem(spec.key)


ONLY_ECDSA = "Weft accepts ECDSA P-256 or P-384"


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        pytest.param(
            Spec(ca=False),
            ["the certificate is not a CA: basicConstraints says CA:FALSE"],
            id="ca-false",
        ),
        pytest.param(
            Spec(ca=None),
            ["the certificate is not a CA: it has no basicConstraints extension"],
            id="no-basic-constraints",
        ),
        pytest.param(
            Spec(key_cert_sign=False),
            ["the certificate may not sign certificates: its keyUsage lacks keyCertSign"],
            id="no-keycertsign",
        ),
        pytest.param(
            Spec(
                not_before=datetime.datetime(2019, 1, 1, tzinfo=datetime.UTC),
                not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
            ),
            ["the certificate expired at 2020-01-01T00:00:00Z"],
            id="expired",
        ),
        pytest.param(
            Spec(
                not_before=datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC),
                not_after=datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC),
            ),
            ["the certificate is not valid until 2099-01-01T00:00:00Z"],
            id="not-yet-valid",
        ),
        pytest.param(
            Spec(key=rsa.generate_private_key(65537, 2048)),
            [f"unsupported key: RSA 2048 bits; {ONLY_ECDSA}"],
            id="rsa-2048",
        ),
        pytest.param(
            Spec(key=rsa.generate_private_key(65537, 1024)),
            [f"unsupported key: RSA 1024 bits; {ONLY_ECDSA}"],
            id="rsa-1024",
        ),
        pytest.param(
            Spec(key=ec.generate_private_key(ec.SECP521R1())),
            [f"unsupported key: ECDSA P-521; {ONLY_ECDSA}"],
            id="p521",
        ),
        pytest.param(
            Spec(key=ed25519.Ed25519PrivateKey.generate()),
            [f"unsupported key: Ed25519; {ONLY_ECDSA}"],
            id="ed25519",
        ),
        pytest.param(
            Spec(ca=False, not_after=NOW - DAY, not_before=NOW - 2 * DAY),
            [
                "the certificate is not a CA: basicConstraints says CA:FALSE",
                f"the certificate expired at {clock.timestamp(NOW - DAY)}",
            ],
            id="every-problem-at-once",
        ),
    ],
)
def test_refused_ca(tmp_path: Path, spec: Spec, problems: list[str]) -> None:
    assert refusal(tmp_path, *root_with(spec)) == problems


def test_refused_when_the_certificate_does_not_match_the_key(tmp_path: Path) -> None:
    cert, _ = root_with(Spec())
    assert refusal(tmp_path, cert, key_pem(p256())) == [
        "the certificate does not match the key: its public key is not the key's public half"
    ]


def test_refused_files_that_are_not_pem(tmp_path: Path) -> None:
    assert refusal(tmp_path, b"not a certificate", key_pem(p256())) == [
        f"{tmp_path / 'ca.crt'} holds no PEM certificate"
    ]
    cert, _ = root_with(Spec())
    assert refusal(tmp_path, cert, cert) == [f"{tmp_path / 'ca.key'} is not a PEM private key"]


def test_refused_encrypted_key(tmp_path: Path) -> None:
    spec = Spec()
    assert refusal(tmp_path, pem_of(build(spec)), key_pem(spec.key, b"secret")) == [
        f"{tmp_path / 'ca.key'} is an encrypted private key; provide it unencrypted"
    ]


def test_refused_missing_file(tmp_path: Path) -> None:
    with pytest.raises(identity.RefusedCAError, match=r"cannot read .*nope\.crt: No such file"):
        identity.ca.read_provided(tmp_path / "nope.crt", tmp_path / "nope.key", NOW)


def intermediate_chain() -> tuple[Spec, x509.Certificate, x509.Certificate]:
    root_spec = Spec(name="Org Root")
    root = build(root_spec)
    spec = Spec(name="Weft Intermediate")
    return spec, build(spec, (root, root_spec.key)), root


def test_refused_intermediate_without_its_root(tmp_path: Path) -> None:
    spec, intermediate, _ = intermediate_chain()
    assert refusal(tmp_path, pem_of(intermediate), key_pem(spec.key)) == [
        "the chain does not end with a self-signed root; append the root certificate so the "
        "trust bundle has an anchor"
    ]


def test_refused_chain_in_the_wrong_order(tmp_path: Path) -> None:
    spec, intermediate, _ = intermediate_chain()
    stranger = build(Spec(name="Another Root"))
    assert refusal(tmp_path, pem_of(intermediate, stranger), key_pem(spec.key)) == [
        "certificate 1 is not signed by certificate 2; list the CA first, then each issuer up "
        "to the root"
    ]


def test_refused_expired_chain_certificate(tmp_path: Path) -> None:
    root_spec = Spec(name="Old Root", not_after=NOW - DAY, not_before=NOW - 9 * DAY)
    root = build(root_spec)
    spec = Spec(name="Weft Intermediate")
    intermediate = build(spec, (root, root_spec.key))
    assert refusal(tmp_path, pem_of(intermediate, root), key_pem(spec.key)) == [
        f"chain certificate 2 expired at {clock.timestamp(NOW - DAY)}"
    ]


def openssl_verify(*args: str) -> str:
    done = subprocess.run(["openssl", "verify", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_intermediate_chain_verifies_with_untrusted_intermediate(tmp_path: Path) -> None:
    spec, intermediate, root = intermediate_chain()
    cert_path, key_path = files(tmp_path, pem_of(intermediate, root), key_pem(spec.key))
    store = identity.FileStore(tmp_path / "state")
    identity.ca.init(store, "test.local", NOW, from_pem=(cert_path, key_path))
    issued = identity.ca.issuer(store).issue(SpiffeId("test.local", "a", "web"), DAY, NOW)
    assert issued.intermediates == (intermediate,)
    tls = tmp_path / "tls.crt"
    tls.write_bytes(issued.chain_pem())  # leaf + intermediate, as a sidecar sends it
    bundle = store.root / "bundle.pem"
    assert bundle.read_bytes() == pem_of(root)  # the anchor is the root, not the intermediate
    assert openssl_verify("-CAfile", str(bundle), "-untrusted", str(tls), str(tls)) == f"{tls}: OK"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_p384_root_signs_with_sha384(tmp_path: Path) -> None:
    spec = Spec(key=ec.generate_private_key(ec.SECP384R1()))
    authority = user_ca.load(*root_with(spec), NOW, "ca.crt", "ca.key")
    leaf = authority.issuer().issue(SpiffeId("test.local", "a", "web"), DAY, NOW)
    assert leaf.certificate.signature_hash_algorithm is not None
    assert leaf.certificate.signature_hash_algorithm.name == "sha384"
    assert leaf.key.curve == "P-256"  # workloads always get P-256, whatever the CA's curve
    (tmp_path / "root.crt").write_bytes(pem_of(authority.root))
    (tmp_path / "tls.crt").write_bytes(leaf.chain_pem())
    openssl_verify("-CAfile", str(tmp_path / "root.crt"), str(tmp_path / "tls.crt"))


# ---------------------------------------------------------------- nothing touched on refusal


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under root with its mode and content (or symlink target)."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        mode = os.lstat(path).st_mode
        if path.is_symlink():
            found[str(path.relative_to(root))] = (mode, os.readlink(path))
        elif path.is_file():
            found[str(path.relative_to(root))] = (mode, path.read_bytes())
        else:
            found[str(path.relative_to(root))] = (mode, "dir")
    return found


def populated(state: Path) -> identity.FileStore:
    store = identity.FileStore(state)
    identity.ca.init(store, "test.local", NOW)
    identity.ensure(
        store,
        [Identity("spiffe://test.local/ns/a/sa/web", "a", "web", ("a/web",))],
        trust_domain="test.local",
        lifetime=DAY,
        now=NOW,
    )
    return store


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(Spec(ca=False), id="not-a-ca"),
        pytest.param(Spec(not_after=NOW - DAY, not_before=NOW - 2 * DAY), id="expired"),
        pytest.param(Spec(key=rsa.generate_private_key(65537, 2048)), id="unsupported-key"),
    ],
)
def test_a_refused_rotation_touches_nothing(
    tmp_path: Path, spec: Spec, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    populated(state)
    before = snapshot(state)
    cert_path, key_path = files(tmp_path, *root_with(spec))
    code = cli.main(
        ["ca", "rotate", "--state-dir", str(state), "--from-pem", str(cert_path), str(key_path)]
    )
    assert code == 1
    assert capsys.readouterr().err.startswith(
        f"weft ca rotate: refusing the CA in {cert_path} and {key_path}: "
    )
    assert snapshot(state) == before


def test_a_refused_rotation_to_a_mismatched_key_touches_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = populated(state)
    before = snapshot(state)
    cert, _ = root_with(Spec())
    paths = files(tmp_path, cert, key_pem(p256()))
    with pytest.raises(identity.RefusedCAError, match="does not match the key"):
        identity.ca.rotate(store, NOW, from_pem=paths)
    assert snapshot(state) == before


def test_a_refused_init_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cert_path, key_path = files(tmp_path, *root_with(Spec(ca=False)))
    args = ["ca", "init", "--state-dir", str(state), "--from-pem", str(cert_path), str(key_path)]
    assert cli.main(args) == 1
    assert capsys.readouterr().err == (
        f"weft ca init: refusing the CA in {cert_path} and {key_path}: "
        "the certificate is not a CA: basicConstraints says CA:FALSE\n"
    )
    assert not state.exists()


def test_accepted_user_root_becomes_the_active_ca(tmp_path: Path) -> None:
    spec = Spec()
    cert = build(spec)
    paths = files(tmp_path, pem_of(cert), key_pem(spec.key))
    store = identity.FileStore(tmp_path / "state")
    ca_id = identity.ca.init(store, "test.local", NOW, from_pem=paths)
    assert identity.ca.issuer(store).chain == (cert,)
    assert identity.ca.issuer(store).ca_id == ca_id
    assert (store.root / "ca" / ca_id / "ca.key").stat().st_mode & 0o777 == 0o600
