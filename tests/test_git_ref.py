"""`--ref`: intent read from a commit of a real git repository, not from the working tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler import cli, intent


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "HOME": str(repo),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    )
    return done.stdout.strip()


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "mesh"
    shutil.copytree(template, root)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "seed")
    return root


def test_revision_names_ref_and_commit(repo: Path) -> None:
    sha = git(repo, "rev-parse", "HEAD")
    mesh = intent.load(intent.files.from_git(repo, "main"))
    assert mesh.revision == f"main@sha1:{sha}"
    assert len(mesh.services) == 6


def test_reads_the_commit_not_the_working_tree(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "b" / "policies.yaml").write_text("kind: [broken\n")
    assert cli.main(["validate", str(repo), "--ref", "main"]) == 0
    assert cli.main(["validate", str(repo)]) == 1
    assert "b/policies.yaml:2:1: error: YAML syntax" in capsys.readouterr().err


def test_a_broken_commit_is_reported_with_repository_paths(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "c" / "services.yaml").write_text(
        (repo / "c" / "services.yaml").read_text().replace("port: 5432", "port: 99999")
    )
    git(repo, "commit", "-qam", "break the db port")
    assert cli.main(["validate", str(repo), "--ref", "HEAD"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"{repo}/c/services.yaml:22:13: error: spec.ports[0].port: "
        "99999 is out of range (must be at most 65535)"
    )
    # c/db exists, broken: policies that name it must not also claim it is unknown
    assert "unknown service" not in err
    # the previous commit is still good
    assert cli.main(["validate", str(repo), "--ref", "HEAD~1"]) == 0


def test_tags_and_unknown_refs(repo: Path) -> None:
    git(repo, "tag", "v1.0.0")
    assert intent.files.from_git(repo, "v1.0.0").revision.startswith("v1.0.0@sha1:")
    with pytest.raises(intent.IntentError, match="cannot resolve ref 'nope'"):
        intent.files.from_git(repo, "nope")


def test_hidden_folders_and_other_files_are_not_intent(repo: Path) -> None:
    (repo / ".github").mkdir()
    (repo / ".github" / "ci.yaml").write_text("on: push\n")
    (repo / "notes.txt").write_text("not yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "other files")
    snapshot = intent.files.from_git(repo, "main")
    assert all(not f.path.startswith(".") for f in snapshot.files)
    assert intent.load(snapshot)


def test_a_folder_inside_a_repository_is_read_alone(repo: Path, tmp_path: Path) -> None:
    (repo / "unrelated").mkdir()
    (repo / "unrelated" / "compose.yaml").write_text("services: {}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an unrelated folder")
    snapshot = intent.files.from_git(repo / "b", "main")
    assert sorted(f.path for f in snapshot.files) == [
        "external.yaml",
        "policies.yaml",
        "routes.yaml",
        "services.yaml",
    ]
    with pytest.raises(intent.IntentError, match="'nope' is not a folder at 'main'"):
        intent.files.from_git(repo / "nope", "main")
    with pytest.raises(intent.IntentError, match="not inside a git repository"):
        intent.files.from_git(tmp_path / "elsewhere", "main")
