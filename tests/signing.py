"""Signing keys made at test time, and git commits and tags signed with them by the git CLI.

- `GpgKey`: an OpenPGP key in its own temporary GNUPGHOME (batch generation, `%no-protection`);
  `expired=True` makes one whose `Expire-Date` is in 2021, used to sign as of 2020 through gpg's
  `--faked-system-time`, so the signature is real and the key is expired now.
- `SshKey`: an ed25519 key from ssh-keygen, signing as git's `gpg.format=ssh` does.

`sign_commit` and `sign_tag` run the real `git commit -S` / `git tag -s` in an `Upstream`'s work
clone and push, so what a GitSource fetches is what a developer's git would have made.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.gitservers import GIT_ENV, Upstream


class GpgKey:
    def __init__(self, root: Path, name: str, *, expired: bool = False) -> None:
        self.home = root / f"gpg-{name}"
        self.home.mkdir(mode=0o700, parents=True)
        self.email = f"{name}@example.invalid"
        self.uid = f"{name.capitalize()} <{self.email}>"
        dates = (
            "Creation-Date: 20200101T000000\nExpire-Date: 20210101T000000\n"
            if expired
            else "Expire-Date: 0\n"
        )
        spec = (
            "%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\n"
            f"Name-Real: {name.capitalize()}\nName-Email: {self.email}\n{dates}%commit\n"
        )
        # An expired key is made and used "in 2020": gpg refuses to sign with an expired key.
        self.faked = ["--faked-system-time", "20200601T000000!"] if expired else []
        self._gpg("--gen-key", input=spec)
        listing = self._gpg("--list-keys", "--with-colons", self.email)
        self.fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        self.program = root / f"gpg-{name}.sh"
        faked = " ".join(f"'{a}'" for a in self.faked)
        self.program.write_text(f'#!/bin/sh\nexec gpg {faked} "$@"\n')
        self.program.chmod(0o755)

    def _gpg(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(
            ["gpg", "--batch", *self.faked, *args],
            input=input,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GNUPGHOME": str(self.home)},
        )
        return done.stdout

    def public_key(self) -> str:
        return self._gpg("--armor", "--export", self.fingerprint)

    def git_config(self) -> list[str]:
        return [
            "-c", "gpg.format=openpgp",
            "-c", f"gpg.program={self.program}",
            "-c", f"user.signingkey={self.fingerprint}",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}

    def close(self) -> None:
        """Stop the gpg-agent signing started for this home (only it: by its socket dir)."""
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )


class SshKey:
    def __init__(self, root: Path, name: str) -> None:
        self.path = root / f"ssh-{name}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.path)],
            check=True,
        )
        self.public = Path(f"{self.path}.pub")
        self.principal = f"{name}@example.invalid"
        done = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(self.public)], capture_output=True, text=True, check=True
        )
        self.fingerprint = done.stdout.split()[1]  # SHA256:…

    def allowed_signer(self, options: str = 'namespaces="git"') -> str:
        key = " ".join(self.public.read_text().split()[:2])
        return f"{self.principal} {options} {key}\n"

    def git_config(self) -> list[str]:
        return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.public}"]

    def env(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


Signer = GpgKey | SshKey


def _git(upstream: Upstream, args: list[str], env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(upstream.work), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**GIT_ENV, "HOME": str(upstream.work), **(env or {})},
    )
    return done.stdout.strip()


def sign_commit(
    upstream: Upstream,
    signer: Signer | None,
    files: Mapping[str, str],
    message: str = "change",
) -> str:
    """Write files, `git commit -S` with `signer` (plain `git commit` for None), push; the sha."""
    for rel, text in files.items():
        path = upstream.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _git(upstream, ["add", "-A"])
    if signer is None:
        _git(upstream, ["commit", "-q", "--allow-empty", "-m", message])
    else:
        _git(
            upstream,
            [*signer.git_config(), "commit", "-q", "-S", "--allow-empty", "-m", message],
            signer.env(),
        )
    _git(upstream, ["push", "-q", "origin", "HEAD"])
    return _git(upstream, ["rev-parse", "HEAD"])


def sign_tag(upstream: Upstream, signer: Signer | None, name: str, at: str = "HEAD") -> None:
    """`git tag -s` (annotated and unsigned for None) and push it."""
    if signer is None:
        _git(upstream, ["tag", "-f", "-a", "-m", name, name, at])
    else:
        args = [*signer.git_config(), "tag", "-f", "-s", "-m", name, name, at]
        _git(upstream, args, signer.env())
    _git(upstream, ["push", "-q", "-f", "origin", f"refs/tags/{name}"])


def forge_commit(upstream: Upstream, signed: str, message: str) -> str:
    """A commit carrying `signed`'s signature over a different message (what tampering after
    signing makes), pushed as the new tip of main."""
    raw = _git(upstream, ["cat-file", "commit", signed]) + "\n"
    head, _, _ = raw.partition("\n\n")
    forged = f"{head}\n\n{message}\n"
    sha = subprocess.run(
        ["git", "-C", str(upstream.work), "hash-object", "-t", "commit", "-w", "--stdin"],
        input=forged,
        check=True,
        capture_output=True,
        text=True,
        env={**GIT_ENV, "HOME": str(upstream.work)},
    ).stdout.strip()
    _git(upstream, ["update-ref", "refs/heads/main", sha])
    _git(upstream, ["push", "-q", "-f", "origin", "main"])
    return sha
