"""`weft ca init | issue | status | rotate` on a real state directory."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler import cli, identity
from reconciler.compiler.identities import Identity
from reconciler.identity import clock


def weft(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_issue_then_reissue_is_idempotent(
    template: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = weft(capsys, "ca", "issue", str(template), "--state-dir", str(state))
    assert code == 0
    assert out.startswith("generated CA ")
    assert "issued spiffe://weft.local/ns/b/sa/api (new)\n" in out
    assert out.splitlines()[-1].endswith(f": 6 issued, 0 reused -> {state / 'identity'}")
    code, out, _ = weft(capsys, "ca", "issue", str(template), "--state-dir", str(state))
    assert code == 0
    assert len(out.splitlines()) == 1  # nothing issued, nothing generated: the summary only
    assert out.strip().endswith(f": 0 issued, 6 reused -> {state / 'identity'}")


def test_issue_refuses_invalid_intent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "mesh.yaml").write_text("apiVersion: weft.dev/v1alpha1\nkind: Mesh\n")
    code, _, err = weft(
        capsys, "ca", "issue", str(tmp_path / "repo"), "--state-dir", str(tmp_path / "s")
    )
    assert code == 1
    assert "error" in err
    assert not (tmp_path / "s").exists()


def test_init_status_and_json(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = weft(
        capsys, "ca", "init", "--state-dir", str(state), "--trust-domain", "example.org"
    )
    assert code == 0
    assert out.startswith("CA ")
    assert out.strip().endswith(f"for trust domain example.org in {state / 'identity'}")
    code, out, _ = weft(capsys, "ca", "init", "--state-dir", str(state))
    assert code == 1
    code, _, err = weft(capsys, "ca", "init", "--state-dir", str(state))
    assert err.startswith(f"weft ca init: {state / 'identity'} already has a CA")

    code, out, _ = weft(capsys, "ca", "status", "--state-dir", str(state), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["trustDomain"] == "example.org"
    assert [a["role"] for a in data["authorities"]] == ["active"]
    assert data["identities"] == []
    assert data["expired"] == []


def test_status_without_a_ca(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = weft(capsys, "ca", "status", "--state-dir", str(state))
    assert code == 1
    assert err == (
        f"weft ca status: {state / 'identity'} has no CA yet; run `weft ca init` first\n"
    )


def issue_at(state: Path, now: datetime.datetime, lifetime: datetime.timedelta) -> None:
    identity.ensure(
        identity.FileStore(state),
        [
            Identity("spiffe://test.local/ns/a/sa/web", "a", "web", ("a/web",)),
            Identity("spiffe://test.local/ns/b/sa/api", "b", "api", ("b/api",)),
        ],
        trust_domain="test.local",
        lifetime=lifetime,
        now=now,
    )


def test_status_warns_before_expiry_and_fails_when_expired(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = clock.normalise(clock.system())
    issue_at(state, now - datetime.timedelta(hours=1, minutes=30), datetime.timedelta(hours=2))
    code, out, _ = weft(capsys, "ca", "status", "--state-dir", str(state))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{state / 'identity'} (trust domain test.local)"
    assert lines[1] == "CAs in the trust bundle:"
    assert lines[2].startswith("  active  ")
    assert "2 live certificate(s)" in lines[2]
    assert lines[3] == "identities (2):"
    assert lines[4].startswith("  spiffe://test.local/ns/a/sa/web  issuer ")
    assert "warning: spiffe://test.local/ns/a/sa/web expires at " in out
    assert "(in 29m)" in out
    code, out, _ = weft(capsys, "ca", "status", "--state-dir", str(state), "--warn-before", "10m")
    assert code == 0
    assert "expires at" not in out
    assert "warning: spiffe://test.local/ns/a/sa/web: renewal overdue since " in out

    old = state.with_name("old")
    issue_at(old, now - datetime.timedelta(hours=3), datetime.timedelta(hours=2))
    code, out, _ = weft(capsys, "ca", "status", "--state-dir", str(old), "--json")
    assert code == 1
    assert json.loads(out)["expired"] == [
        "spiffe://test.local/ns/a/sa/web",
        "spiffe://test.local/ns/b/sa/api",
    ]


def test_status_metrics_in_prometheus_text(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    issue_at(state, clock.system(), datetime.timedelta(hours=24))
    code, out, _ = weft(capsys, "ca", "status", "--state-dir", str(state), "--metrics")
    assert code == 0
    assert "# TYPE weft_certificate_expiry_timestamp_seconds gauge" in out
    assert (
        'weft_certificate_expiry_timestamp_seconds{namespace="a",service_account="web",'
        'spiffe_id="spiffe://test.local/ns/a/sa/web",issuer="'
    ) in out
    assert 'weft_ca_live_certificates{ca_id="' in out


def test_rotate_with_grace_then_issue_completes_the_rollover(
    template: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weft(capsys, "ca", "issue", str(template), "--state-dir", str(state))
    code, out, _ = weft(capsys, "ca", "rotate", "--state-dir", str(state), "--grace", "0s")
    assert code == 0
    assert " is trusted now beside CA " in out
    code, _, err = weft(capsys, "ca", "rotate", "--state-dir", str(state))
    assert code == 1
    assert "already under way" in err
    code, out, _ = weft(capsys, "ca", "issue", str(template), "--state-dir", str(state))
    assert code == 0
    assert " now issues; the previous CA stays trusted until it drains" in out
    assert " retired: no live certificate chains to it" in out
    assert ": 6 issued, 0 reused" in out
    code, out, _ = weft(capsys, "ca", "status", "--state-dir", str(state), "--json")
    assert [a["role"] for a in json.loads(out)["authorities"]] == ["active"]


def test_bad_durations_are_usage_errors(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ca", "status", "--state-dir", str(state), "--warn-before", "soon"])
    assert exit_.value.code == 2
    assert "'soon' is not a duration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"WEFT_STATE_DIR": "{tmp}/w"}, "{tmp}/w/identity", id="weft-state-dir"),
        pytest.param({"XDG_STATE_HOME": "{tmp}/x"}, "{tmp}/x/weft/identity", id="xdg"),
        pytest.param({"HOME": "{tmp}/home"}, "{tmp}/home/.local/state/weft/identity", id="home"),
    ],
)
def test_default_state_dir(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    expected: str,
) -> None:
    for name in ("WEFT_STATE_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    code, out, _ = weft(capsys, "ca", "init")
    assert code == 0
    assert out.strip().endswith(f" in {expected.format(tmp=tmp_path)}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_files_a_sidecar_reads_verify_with_openssl(
    template: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weft(capsys, "ca", "issue", str(template), "--state-dir", str(state))
    web = state / "identity" / "workloads" / "a" / "web"
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(web / "ca.crt"), str(web / "tls.crt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout == f"{web / 'tls.crt'}: OK\n", done.stderr
    key = subprocess.run(
        ["openssl", "pkey", "-in", str(web / "tls.key"), "-pubout"], capture_output=True, check=True
    ).stdout
    cert = subprocess.run(
        ["openssl", "x509", "-in", str(web / "tls.crt"), "-noout", "-pubkey"],
        capture_output=True,
        check=True,
    ).stdout
    assert key == cert
    assert os.stat(web / "tls.key").st_mode & 0o777 == 0o600
