"""Certificate expiry in the reconciler's status: written by the loop, printed by `weft status`.

Certificates are real ones, issued at test time by `identity.ensure` into a state directory;
the loop's clock is injected, so "expiring soon" and "expired" are reached without waiting.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli, identity, intent, loop, status, targets
from reconciler.compiler import DesiredState
from reconciler.compiler.identities import Identity
from reconciler.identity import clock
from tests import sidecars
from tests.conftest import write_repo

TD = "status.local"
HOUR = datetime.timedelta(hours=1)
T0 = datetime.datetime(2031, 3, 1, 12, 0, tzinfo=datetime.UTC)
WEB = f"spiffe://{TD}/ns/a/sa/web"
API = f"spiffe://{TD}/ns/b/sa/api"


class OneRevision:
    """A source that always has the same intent directory, as revision `main@sha1:aaa…`."""

    revision = "main@sha1:" + "a" * 40

    def __init__(self, root: Path) -> None:
        self.root = root

    def fetch(self) -> str | None:
        return self.revision

    def verify(self, revision: str) -> None:
        return None  # no trusted keys: signatures not required

    def snapshot(self, revision: str) -> intent.files.Snapshot:
        return intent.files.from_directory(self.root)


class NothingToDo:
    """A target that already runs everything; `maintain` ends the loop after `ticks` calls."""

    name = "nothing"

    def __init__(self, stop: threading.Event, ticks: int = 1) -> None:
        self.stop, self.ticks = stop, ticks

    def observe(self) -> Mapping[str, str]:
        return {}

    def plan(self, desired: DesiredState, observed: Mapping[str, str]) -> targets.Plan:
        return targets.Plan(desired.revision, ())

    def apply(self, plan: targets.Plan) -> list[str]:
        return []

    def prune(self, plan: targets.Plan) -> list[str]:
        return []

    def maintain(self) -> None:
        self.ticks -= 1
        if self.ticks <= 0:
            self.stop.set()

    def report(self, status: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def issue(state: Path, now: datetime.datetime, lifetime: datetime.timedelta) -> None:
    identity.ensure(
        identity.FileStore(state),
        [
            Identity(WEB, "a", "web", ("a/web",)),
            Identity(API, "b", "api", ("b/api",)),
        ],
        trust_domain=TD,
        lifetime=lifetime,
        now=now,
    )


class Clock:
    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


def reconciler(
    tmp_path: Path, state: Path, now: Clock, target: targets.Target | None = None
) -> loop.Reconciler:
    repo = write_repo(
        tmp_path / "repo",
        {"mesh.yaml": sidecars.mesh_yaml(TD), "services.yaml": sidecars.WEB_AND_API},
    )
    store = identity.FileStore(state)
    return loop.Reconciler(
        OneRevision(repo),
        target or NothingToDo(threading.Event()),
        state / "status.json",
        certificates=lambda at: identity.status.read(store, at),
        clock=now,
    )


def test_a_reconcile_writes_every_certificate_and_ca_with_its_expiry(tmp_path: Path) -> None:
    state = tmp_path / "state"
    issue(state, T0, 24 * HOUR)
    rec = reconciler(tmp_path, state, Clock(T0 + HOUR))
    assert rec.reconcile(OneRevision.revision)

    written = json.loads((state / "status.json").read_text())
    certificates = written["certificates"]
    assert certificates["checkedAt"] == "2031-03-01T13:00:00Z"
    assert certificates["trustDomain"] == TD
    [ca] = certificates["authorities"]
    assert ca["role"] == "active"
    assert ca["notAfter"].startswith("2041-")  # a generated root lives ten years
    by_id = {w["spiffeId"]: w for w in certificates["identities"]}
    assert sorted(by_id) == [WEB, API]
    stored = identity.FileStore(state).read_workload(identity.WorkloadKey("a", "web"))
    assert stored is not None
    assert stored.leaf is not None
    assert by_id[WEB]["serial"] == f"{stored.leaf.serial_number:x}"
    assert by_id[WEB]["issuer"] == ca["caId"]
    assert by_id[WEB]["notAfter"] == "2031-03-02T12:00:00Z"
    assert certificates["warnings"] == []
    [condition] = [c for c in written["conditions"] if c["type"] == "CertificateWarning"]
    assert (condition["status"], condition["reason"]) == (False, "Valid")
    assert condition["message"] == "2 identities and 1 CA(s) valid"


def test_the_status_holds_no_key_material(tmp_path: Path) -> None:
    state = tmp_path / "state"
    issue(state, T0, 24 * HOUR)
    assert reconciler(tmp_path, state, Clock(T0)).reconcile(OneRevision.revision)
    text = (state / "status.json").read_text()
    keys = list((state / "identity").rglob("*.key"))
    assert len(keys) >= 3  # the CA's and both workloads'
    for key in keys:
        pem = key.read_text()
        body = "".join(pem.strip().splitlines()[1:-1])
        assert body[:40] not in text, key
    assert "PRIVATE KEY" not in text


@pytest.mark.parametrize(
    ("after", "warning", "reason", "message"),
    [
        pytest.param(HOUR, False, "Valid", "2 identities and 1 CA(s) valid", id="fresh"),
        pytest.param(
            14 * HOUR,
            True,
            "RenewalOverdue",
            f"{WEB} renewal overdue, {API} renewal overdue",
            id="past-the-renewal-window",
        ),
        pytest.param(
            20 * HOUR,
            True,
            "ExpiringSoon",
            f"{WEB} expiring soon, {API} expiring soon",
            id="within-the-warning-threshold",
        ),
        pytest.param(25 * HOUR, True, "Expired", f"{WEB} expired, {API} expired", id="expired"),
    ],
)
def test_the_certificate_warning_condition_follows_the_clock(
    tmp_path: Path, after: datetime.timedelta, warning: bool, reason: str, message: str
) -> None:
    state = tmp_path / "state"
    issue(state, T0, 24 * HOUR)
    rec = reconciler(tmp_path, state, Clock(T0 + after))
    assert rec.reconcile(OneRevision.revision)
    condition = rec.status.conditions["CertificateWarning"]
    assert (condition.status, condition.reason, condition.message) == (warning, reason, message)


def test_a_ca_near_its_end_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    issue(state, T0, 24 * HOUR)
    ca_not_after = identity.status.read(identity.FileStore(state), T0).authorities[0].not_after
    rec = reconciler(tmp_path, state, Clock(ca_not_after - 10 * 24 * HOUR))
    rec.reconcile(OneRevision.revision)
    condition = rec.status.conditions["CertificateWarning"]
    assert condition.reason == "Expired"  # the 24 h leaves are long gone by then
    assert condition.message.startswith("CA ")
    assert " expiring soon, " in condition.message
    warnings = rec.status.as_json()["certificates"]["warnings"]
    assert any(w.endswith("start a rollover with `weft ca rotate`") for w in warnings)


def test_the_loop_rewrites_the_status_only_when_certificates_say_something_new(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    issue(state, T0, 24 * HOUR)
    now = Clock(T0 + HOUR)
    rec = reconciler(tmp_path, state, now)
    assert rec.reconcile(OneRevision.revision)
    assert rec.observe_certificates() is False  # an hour later or not, nothing new to say
    now.now = T0 + 2 * HOUR
    assert rec.observe_certificates() is False
    now.now = T0 + 20 * HOUR
    assert rec.observe_certificates() is True
    assert rec.status.conditions["CertificateWarning"].reason == "ExpiringSoon"
    issue(state, now.now, 24 * HOUR)  # renewed (as the target's maintain would)
    assert rec.observe_certificates() is True
    assert rec.status.conditions["CertificateWarning"].reason == "Valid"


def test_the_loop_writes_expiry_found_between_revisions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    issue(state, T0, 24 * HOUR)
    now = Clock(T0 + HOUR)
    stop = threading.Event()
    rec = reconciler(tmp_path, state, now, NothingToDo(stop))
    assert rec.reconcile(OneRevision.revision)  # the next tick finds nothing new to apply
    now.now = T0 + 25 * HOUR
    rec.run(stop, threading.Event(), poll_seconds=0.01)
    written = status.read(state / "status.json")
    assert written is not None
    condition = written.conditions["CertificateWarning"]
    assert (condition.status, condition.reason) == (True, "Expired")
    assert written.certificates_expired() == [WEB, API]


def test_no_ca_yet_means_no_certificate_section(tmp_path: Path) -> None:
    state = tmp_path / "state"
    rec = reconciler(tmp_path, state, Clock(T0))
    assert rec.reconcile(OneRevision.revision)
    assert rec.status.certificates is None
    assert "CertificateWarning" not in rec.status.conditions
    assert json.loads((state / "status.json").read_text())["certificates"] is None


def test_status_json_reads_back_to_the_same_status(tmp_path: Path) -> None:
    state = tmp_path / "state"
    issue(state, T0, 24 * HOUR)
    rec = reconciler(tmp_path, state, Clock(T0 + 20 * HOUR))
    assert rec.reconcile(OneRevision.revision)
    again = status.read(state / "status.json")
    assert again is not None
    assert again.certificates == rec.status.certificates
    assert again.certificates_checked_at == T0 + 20 * HOUR
    assert again.as_json() == rec.status.as_json()


# ------------------------------------------------------------------ weft status, as users see it


def weft(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_weft_status_prints_certificates_and_warns_as_of_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    now = clock.normalise(clock.system())
    # Issued 20 hours ago for 24: 4 hours left, inside the 8 h warning threshold.
    issue(state, now - 20 * HOUR, 24 * HOUR)
    # The reconciler last looked when they were fresh; `weft status` judges them as of now.
    assert reconciler(tmp_path, state, Clock(now - 19 * HOUR)).reconcile(OneRevision.revision)
    written = status.read(state / "status.json")
    assert written is not None
    assert written.conditions["CertificateWarning"].reason == "Valid"

    code, out, _ = weft(capsys, "status", "--state-dir", str(state))
    assert code == 0
    lines = out.splitlines()
    assert any(
        line.startswith("CertificateWarning  True   ExpiringSoon: ") and WEB in line
        for line in lines
    ), out
    header = next(i for i, line in enumerate(lines) if line.startswith("certificates, as of "))
    assert lines[header + 1] == f"  {state / 'identity'} (trust domain {TD})"
    assert lines[header + 2] == "  CAs in the trust bundle:"
    assert lines[header + 3].startswith("    active  ")
    web = next(line for line in lines if line.startswith(f"    {WEB}  issuer "))
    assert " serial " in web
    assert " notAfter " in web
    assert f"warning: {WEB} expires at " in out
    assert "(in 4h00m)" in out or "(in 3h59m)" in out

    code, out, _ = weft(capsys, "status", "--state-dir", str(state), "--json")
    assert code == 0
    data = json.loads(out)
    assert {w["spiffeId"] for w in data["certificates"]["identities"]} == {WEB, API}
    assert all(
        w["issuer"] and w["serial"] and w["notAfter"] for w in data["certificates"]["identities"]
    )
    assert data["certificates"]["authorities"][0]["notAfter"]
    assert len(data["certificates"]["warnings"]) == 2


def test_weft_status_exits_1_once_a_certificate_has_expired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    now = clock.normalise(clock.system())
    issue(state, now - 3 * HOUR, 2 * HOUR)
    assert reconciler(tmp_path, state, Clock(now - 3 * HOUR)).reconcile(OneRevision.revision)
    code, out, _ = weft(capsys, "status", "--state-dir", str(state))
    assert code == 1
    assert "CertificateWarning  True   Expired: " in out
    assert f"warning: {WEB} expired at " in out


def test_weft_status_prints_a_refused_revisions_errors_once_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    repo = write_repo(
        tmp_path / "repo",
        {
            "mesh.yaml": sidecars.mesh_yaml(TD),
            "services.yaml": sidecars.WEB_AND_API.replace("port: 8080", "port: 80800", 1),
        },
    )
    rec = loop.Reconciler(OneRevision(repo), NothingToDo(threading.Event()), state / "status.json")
    assert not rec.reconcile(OneRevision.revision)

    assert cli.main(["status", "--state-dir", str(state)]) == 1
    lines = capsys.readouterr().out.splitlines()
    # The diagnostic is printed as `weft validate` prints it: one "error:", after the position.
    errors = [x for x in lines if "error:" in x]
    assert len(errors) == 1, lines
    assert re.fullmatch(
        r"services\.yaml:\d+:\d+: error: spec\.ports\[0\]\.port: 80800 .*", errors[0]
    )
    assert errors[0].count("error:") == 1


def test_weft_status_without_state_says_where_it_looked_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "never-used"
    assert cli.main(["status", "--state-dir", str(empty)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"no reconcile status in {empty} (no status.json)" in err
    assert "--state-dir" in err
