"""What counts as an intent file: regular files only; links and FIFOs are refused by name, unread.

A `*.yaml` link to a file outside the repository must not be opened (its content could surface
in an error message), a FIFO must not hang the reader, and a directory and its commit must read
the same: git stores a link as the path it points to, so links inside the tree are refused too.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from reconciler import cli, intent
from tests.test_broken_intents import CORPUS, ERROR, Expected
from tests.test_git_ref import git

SECRET = "hunter2-do-not-print-me"
HINT = "replace it with the file itself (or rename it so it does not end in .yaml)"


def refused(path: str, what: str) -> Expected:
    return Expected(
        path,
        1,
        1,
        ERROR,
        f"{what}, not a regular file; Weft reads only regular files as intent and never "
        "follows links",
        HINT,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(CORPUS / "clean", root)
    return root


def diagnostics(root: Path) -> list[Expected]:
    mesh, found = intent.check(intent.files.from_directory(root))
    assert mesh is None
    return [
        Expected(d.position.file, d.position.line, d.position.column, d.severity, d.message, d.hint)
        for d in found
    ]


def test_a_link_out_of_the_repository_is_refused_and_never_read(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Content that, were it parsed, would be quoted back: a YAML error names the bad token.
    secret = tmp_path / "outside" / "secret.yaml"
    secret.parent.mkdir()
    secret.write_text(f"{SECRET}: [unclosed\n")
    (repo / "stolen.yaml").symlink_to(secret)
    before = secret.stat().st_atime_ns

    assert diagnostics(repo) == [refused("stolen.yaml", "a symbolic link")]

    assert cli.main(["validate", str(repo)]) == 1
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert f"{repo}/stolen.yaml:1:1: error: a symbolic link, not a regular file" in err
    assert cli.main(["validate", "--json", str(repo)]) == 1
    assert SECRET not in capsys.readouterr().out
    assert secret.stat().st_atime_ns == before, "the link's target was opened"


def test_a_link_to_a_fifo_and_a_fifo_are_refused_without_blocking(
    repo: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (repo / "piped.yaml").symlink_to(fifo)
    os.mkfifo(repo / "named-pipe.yaml")
    result: list[list[Expected]] = []
    # An open of a FIFO for reading blocks until a writer comes: run it where a hang shows.
    reader = threading.Thread(target=lambda: result.append(diagnostics(repo)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "reading the repository blocked on a FIFO"
    assert result == [
        [
            refused("named-pipe.yaml", "a FIFO (named pipe)"),
            refused("piped.yaml", "a symbolic link"),
        ]
    ]


def test_links_inside_the_tree_are_refused_the_same_in_a_directory_and_its_commit(
    repo: Path,
) -> None:
    (repo / "shared").mkdir()
    (repo / "shared" / "extra.yaml").write_text(
        "# Fine on its own.\napiVersion: weft.dev/v1alpha1\nkind: Service\n"
        "metadata: {name: extra, namespace: x}\nspec: {ports: [{name: http, port: 80}]}\n"
    )
    (repo / "alias.yaml").symlink_to("shared/extra.yaml")
    (repo / "folder-link").symlink_to("shared")
    (repo / "README").symlink_to("shared/extra.yaml")  # not intent by name: ignored
    expected = [
        refused("alias.yaml", "a symbolic link"),
        refused("folder-link", "a symbolic link to a folder"),
    ]
    assert diagnostics(repo) == expected

    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "links")
    mesh, found = intent.check(intent.files.from_git(repo, "main"))
    assert mesh is None
    assert [(d.position.file, d.message, d.hint) for d in found] == [
        (e.file, e.message, e.hint) for e in expected
    ]


def test_hidden_links_are_not_intent(repo: Path, tmp_path: Path) -> None:
    # Other tools' folders (.github, ...) are never read, so what they link to does not matter.
    (repo / ".hidden").mkdir()
    (repo / ".hidden" / "x.yaml").symlink_to(tmp_path)
    (repo / ".elsewhere").symlink_to(tmp_path)
    mesh, found = intent.check(intent.files.from_directory(repo))
    assert mesh is not None
    assert found == []
