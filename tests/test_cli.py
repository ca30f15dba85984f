"""The `weft` command line on the template: compile output tree and the reach matrix."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from reconciler import cli


def test_reach_table_shows_the_seed_scenario(
    template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reach", str(template)]) == 0
    out = capsys.readouterr().out
    decided = {" ".join(line.split()) for line in out.splitlines()}
    assert "a/web -> b/api:http allow b/allow-from-a-and-c" in decided
    assert "a/web -> c/ledger:http deny c/never-from-a" in decided
    assert "c/ledger -> a/web:http deny a/never-from-c" in decided
    assert "b/api -> c/ledger:http conditional c/ledger-from-b" in decided


def test_reach_json_filters_by_source_and_destination(
    template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(
            ["reach", str(template), "--json", "--from", "a/web", "--to", "c/db", "--to", "b/api"]
        )
        == 0
    )
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [(c["destination"], c["decision"], c["policies"]) for c in cells] == [
        ("b/api", "allow", ["b/allow-from-a-and-c"]),
        ("c/db", "deny", ["c/never-from-a"]),
    ]


def test_compile_writes_the_output_tree(
    template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert cli.main(["compile", str(template), "--out", str(out)]) == 0
    assert (
        "6 ProxyConfigs, 6 identities, 6 NetworkPolicies, 8 discovery Services"
        in capsys.readouterr().out
    )
    config = json.loads((out / "proxyconfigs" / "b" / "api.json").read_text())
    assert config["schemaVersion"] == "weft.dev/proxyconfig/v1"
    assert config["revision"] == (out / "revision").read_text().strip()
    assert config["revision"].startswith("workdir@sha256:")


def test_compile_refuses_an_invalid_revision_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "mesh.yaml").write_text("apiVersion: weft.dev/v1alpha1\nkind: Mesh\n")
    out = tmp_path / "out"
    assert cli.main(["compile", str(tmp_path / "repo"), "--out", str(out)]) == 1
    assert not out.exists()


def test_console_script_and_native_module_are_installed() -> None:
    done = subprocess.run(
        [Path(sys.executable).parent / "weft", "version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("weft 0.1.0 (fastpath 0.1.0)")


def test_reach_decided_by_column_is_aligned(
    template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reach", str(template)]) == 0
    rows = capsys.readouterr().out.split("decided by:\n", 1)[1].splitlines()
    found = [re.fullmatch(r"  (\S+ -> \S+) +(allow|deny|conditional) +(\S.*)", r) for r in rows]
    assert rows
    assert all(found), rows
    # Pairs differ in length (a/web -> b/api:http, b/api -> c/ledger:http): decisions and the
    # policies after them still start in one column each.
    assert len({len(m[1]) for m in found if m}) > 1
    assert len({m.start(2) for m in found if m}) == 1, rows
    assert len({m.start(3) for m in found if m}) == 1, rows


def test_up_banner_names_the_exact_status_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "my state"
    show = cli.serve._banner(tmp_path / "repo", str(state))
    show(types.SimpleNamespace(listening={}))  # type: ignore[arg-type]  # only .listening is read
    out = capsys.readouterr().out
    assert f"Status: weft status --state-dir '{state}'    Stop: Ctrl-C" in out
    show = cli.serve._banner(tmp_path / "repo", None)
    show(types.SimpleNamespace(listening={}))  # type: ignore[arg-type]
    assert "Status: weft status    Stop: Ctrl-C" in capsys.readouterr().out
