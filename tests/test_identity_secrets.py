"""Keys never show: not in logs, reprs, str(), exception messages, tracebacks or CLI output.

The secrets searched for are read from the store after a full life cycle (init, issue, rotate,
reissue, a refused CA): each key's PEM body lines and its private scalar in decimal and hex.
"""

from __future__ import annotations

import datetime
import logging
import pickle
import traceback
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler import cli, identity
from reconciler.compiler.identities import Identity
from reconciler.identity import authority, keys, user_ca
from reconciler.identity.spiffe import SpiffeId

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(hours=24)
WEB = Identity("spiffe://test.local/ns/a/sa/web", "a", "web", ("a/web",))


def secrets_of(pem: bytes) -> list[str]:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value
    body = [line for line in pem.decode().splitlines() if not line.startswith("-----")]
    return ["PRIVATE KEY", str(scalar), f"{scalar:x}", f"{scalar:X}", *body]


def all_secrets(root: Path) -> list[str]:
    found: list[str] = []
    for path in root.rglob("*.key"):
        if not path.is_symlink():
            found += secrets_of(path.read_bytes())
    return found


def assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"key material leaked: {secret[:12]}..."


def test_life_cycle_logs_and_output_hold_no_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    store = identity.FileStore(state)
    report = identity.ensure(store, [WEB], trust_domain="test.local", lifetime=DAY, now=T0)
    secrets = all_secrets(state)  # the first CA's key is deleted when it retires: read it now
    rotated = identity.ca.rotate(store, T0, grace=datetime.timedelta(0))
    again = identity.ensure(store, [WEB], trust_domain="test.local", lifetime=DAY, now=T0)
    secrets += all_secrets(state)
    for flags in ([], ["--json"], ["--metrics"]):
        assert cli.main(["ca", "status", "--state-dir", str(state), *flags]) == 0
    status = identity.status.read(store, T0)
    objects: list[object] = [
        store,
        report,
        rotated,
        again,
        status,
        identity.ca.issuer(store),
        *[store.read_authority(ca_id) for ca_id in identity.ca.read_state(store).trusted],
        *[store.read_workload(k) for k in store.workloads()],
    ]
    out = capsys.readouterr()
    text = "\n".join([caplog.text, out.out, out.err, *map(repr, objects), *map(str, objects)])
    assert_clean(text, secrets)
    assert "issued spiffe://test.local/ns/a/sa/web" in caplog.text  # the log does say things


def test_issued_certificates_and_keys_print_only_their_shape() -> None:
    ca = authority.generate("test.local", T0)
    issued = ca.issuer().issue(SpiffeId("test.local", "a", "web"), DAY, T0)
    secrets = secrets_of(issued.key.pem()) + secrets_of(ca.key_pem())
    for thing in (issued, issued.key, ca, ca.issuer()):
        assert_clean(repr(thing) + str(thing), secrets)
    assert repr(issued.key) == "<PrivateKey P-256, not shown>"
    assert repr(ca.issuer()) == f"<Issuer {ca.ca_id}>"


def test_the_issuer_offers_no_way_to_the_key() -> None:
    issuer = authority.generate("test.local", T0).issuer()
    public = {name for name in dir(issuer) if not name.startswith("_")}
    assert public == {"ca_id", "chain", "issue"}


@pytest.mark.parametrize(
    "thing",
    [
        pytest.param(keys.PrivateKey.generate, id="key"),
        pytest.param(lambda: authority.generate("test.local", T0), id="authority"),
        pytest.param(lambda: authority.generate("test.local", T0).issuer(), id="issuer"),
    ],
)
def test_keys_refuse_to_be_pickled(thing: object) -> None:
    assert callable(thing)
    with pytest.raises(TypeError):
        pickle.dumps(thing())


def test_refusal_messages_and_tracebacks_never_quote_the_key(tmp_path: Path) -> None:
    """A CA key that does not match, and a key file that is not a key, both refused."""
    ca = authority.generate("test.local", T0)
    other = keys.PrivateKey.generate()
    secrets = secrets_of(other.pem()) + secrets_of(ca.key_pem())
    cert = ca.chain[0].public_bytes(serialization.Encoding.PEM)
    broken = other.pem().replace(b"\n", b"\n ", 3)  # still the key's text, no longer PEM
    for key_pem in (other.pem(), broken, cert + other.pem()[:60]):
        with pytest.raises(identity.RefusedCAError) as refused:
            user_ca.load(cert, key_pem, T0, "ca.crt", "ca.key")
        text = "".join(traceback.format_exception(refused.value))
        assert_clean(text + str(refused.value) + repr(refused.value), secrets)
