"""Signed revisions: whether a commit, or an annotated tag, is signed by a key Weft trusts.

    keys = signatures.TrustedKeys.load([Path("/etc/weft/trusted-keys")])   # fails fast
    verdict = signatures.verify_commit(repo, sha, keys)                    # a Verdict
    verdict = signatures.verify_tag(repo, "v1.4.0", sha, keys)

Two kinds of signature, both as git writes them:

- OpenPGP (`git commit -S`, the default `gpg.format`): checked with `gpg --verify` against a
  keyring built, for each verification, in a private temporary GNUPGHOME from the armored public
  keys configured, and thrown away after. No gpg-agent is started, nothing of the user's own
  keyring is read, and only the configured keys are in it, so "a good signature" means "by one of
  these keys". An expired or revoked key, an expired signature, a bad one and an unknown key are
  each refused with their own reason.
- SSH (`gpg.format=ssh`): checked with `ssh-keygen -Y verify` against an allowed-signers file
  (the format of ssh-keygen(1) ALLOWED SIGNERS, namespace `git`); `valid-before` / `valid-after`
  there say when a key has expired, checked as of now.

The keys come from files or directories (a mounted ConfigMap or Secret), never from the
repository being verified, and are read again at each verification, so a rotated ConfigMap is
used without a restart. A key file that is armored OpenPGP (`-----BEGIN PGP PUBLIC KEY
BLOCK-----`) is OpenPGP; any other is read as allowed signers, and a line that is not one is
refused naming the file and line.

A `Verdict` is what status, logs and traces carry: the commit, the object that was signed, the
signer (or the absence of one) and the reason, never key material.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pygit2

from reconciler.gitsource.errors import TrustedKeysError

GPG = "gpg"
SSH_KEYGEN = "ssh-keygen"
NAMESPACE = "git"  # what git signs commits and tags in (ssh-keygen -Y sign -n git)
TIMEOUT = 20.0  # seconds for one gpg or ssh-keygen run: a wedged tool must not wedge the loop

_PGP_KEY_BLOCK = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_BEGIN = {
    b"-----BEGIN PGP SIGNATURE-----": "openpgp",
    b"-----BEGIN PGP MESSAGE-----": "openpgp",
    b"-----BEGIN SSH SIGNATURE-----": "ssh",
    b"-----BEGIN SIGNED MESSAGE-----": "x509",
}
# An allowed-signers line: principals, optional options, then a key type and base64 key.
_KEY_TYPE = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com)(-cert-v01@openssh\.com)?$"
)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


@dataclasses.dataclass(frozen=True, slots=True)
class TrustedKeys:
    """The public keys a revision may be signed by, as read from their files."""

    paths: tuple[Path, ...]  # what was configured: files, or directories of files
    openpgp: tuple[str, ...]  # armored public key blocks
    allowed_signers: tuple[str, ...]  # allowed-signers lines
    files: tuple[str, ...]  # every file read, for messages

    @classmethod
    def load(cls, paths: Sequence[Path]) -> TrustedKeys:
        """Read every key file under `paths`; `TrustedKeysError` naming the file (and line) for
        one that cannot be read or parsed, or when no key is configured at all."""
        openpgp: list[str] = []
        signers: list[str] = []
        names: list[str] = []
        for file in _key_files(paths):
            try:
                text = file.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise TrustedKeysError(f"{file}: cannot read trusted keys ({e})") from None
            names.append(str(file))
            if _PGP_KEY_BLOCK in text:
                if "PRIVATE KEY" in text:
                    raise TrustedKeysError(f"{file}: holds a private key; give public keys only")
                openpgp.append(text)
                continue
            for number, line in enumerate(text.splitlines(), 1):
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                if "PRIVATE KEY" in stripped:
                    raise TrustedKeysError(f"{file}: holds a private key; give public keys only")
                _check_signer_line(stripped, file, number)
                signers.append(stripped)
        if not openpgp and not signers:
            where = ", ".join(str(p) for p in paths) or "(no path)"
            raise TrustedKeysError(
                f"no trusted keys in {where}: signatures are required but nothing could verify "
                "one (give armored OpenPGP public keys or an SSH allowed-signers file)"
            )
        return cls(tuple(paths), tuple(openpgp), tuple(signers), tuple(names))

    def reload(self) -> TrustedKeys:
        """The keys as the files say now (a mounted ConfigMap changes in place)."""
        return TrustedKeys.load(self.paths)

    def describe(self) -> str:
        return (
            f"{len(self.openpgp)} OpenPGP key file(s), {len(self.allowed_signers)} SSH "
            f"allowed signer(s) from {', '.join(str(p) for p in self.paths)}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one revision may be applied, and why: what status and traces show."""

    commit: str
    signed_object: str  # "commit <sha>" or "tag <name>"
    trusted: bool
    reason: str  # "good signature", "unsigned", "unknown key", "key expired", "bad signature", …
    signer: str = ""  # who signed, as the key says (uid, or principal); "" when nobody did
    key: str = ""  # the key's fingerprint (OpenPGP) or SHA256 fingerprint (SSH), when known
    format: str = ""  # "openpgp", "ssh", "x509" or "" when unsigned

    def __str__(self) -> str:
        who = self.signer or ("an unknown signer" if self.key else "nobody")
        key = f" ({self.format} key {self.key})" if self.key else ""
        verb = "trusted" if self.trusted else "refused"
        return f"{self.signed_object} {verb}: {self.reason}; signed by {who}{key}"

    def as_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "object": self.signed_object,
            "trusted": self.trusted,
            "reason": self.reason,
            "signer": self.signer or None,
            "key": self.key or None,
            "format": self.format or None,
        }


def verify_commit(repo: pygit2.Repository, commit: str, keys: TrustedKeys) -> Verdict:
    """Whether commit `commit` of `repo` is signed by one of `keys`."""
    what = f"commit {commit}"
    obj = repo.get(commit)
    if obj is None or not isinstance(obj, pygit2.Commit):
        return Verdict(commit, what, False, "not a commit in the repository")
    try:
        signature, payload = obj.gpg_signature
    except (pygit2.GitError, ValueError):
        signature, payload = None, None
    if not signature or payload is None:
        return Verdict(commit, what, False, "unsigned")
    return _verify(what, commit, bytes(signature), bytes(payload), keys)


def verify_tag(repo: pygit2.Repository, tag: str, commit: str, keys: TrustedKeys) -> Verdict:
    """Whether tag `tag` is an annotated tag of `commit` signed by one of `keys`.

    A lightweight tag has nothing to sign, so it is refused: in tag mode the tag is what was
    released, and its signature what says who released it."""
    what = f"tag {tag}"
    try:
        ref = repo.references[f"refs/tags/{tag}"]
    except (KeyError, pygit2.GitError):
        return Verdict(commit, what, False, "no such tag")
    target = repo.get(ref.target)
    if not isinstance(target, pygit2.Tag):
        return Verdict(
            commit, what, False, "unsigned: a lightweight tag (tag mode needs `git tag -s`)"
        )
    try:
        peeled = str(target.peel(pygit2.Commit).id)
    except (ValueError, pygit2.GitError):
        peeled = ""
    if peeled != commit:
        return Verdict(
            commit, what, False, f"the tag points at {peeled or 'no commit'}, not {commit}"
        )
    _, raw = repo.odb.read(target.id)
    payload, signature = split_signed(bytes(raw))
    if signature is None:
        return Verdict(commit, what, False, "unsigned: an annotated tag without a signature")
    return _verify(what, commit, signature, payload, keys)


def split_signed(raw: bytes) -> tuple[bytes, bytes | None]:
    """A tag object split into what was signed and the signature git appended to it (as git's
    own parse_signed_buffer: from the first line that begins a signature block to the end)."""
    offset = 0
    for line in raw.splitlines(keepends=True):
        if line.rstrip(b"\r\n") in _BEGIN:
            return raw[:offset], raw[offset:]
        offset += len(line)
    return raw, None


def signature_format(signature: bytes) -> str:
    first = signature.lstrip().split(b"\n", 1)[0].rstrip(b"\r")
    return _BEGIN.get(first, "")


def _verify(what: str, commit: str, signature: bytes, payload: bytes, keys: TrustedKeys) -> Verdict:
    try:
        current = keys.reload()
    except TrustedKeysError as e:
        # Fail closed: if the keys cannot be read, nothing can be trusted.
        return Verdict(commit, what, False, f"the trusted keys cannot be read: {e}")
    kind = signature_format(signature)
    with _workdir() as work:
        (work / "signature").write_bytes(signature)
        (work / "payload").write_bytes(payload)
        if kind == "openpgp":
            return _verify_openpgp(what, commit, work, current)
        if kind == "ssh":
            return _verify_ssh(what, commit, work, current)
    if kind == "x509":
        return Verdict(
            commit,
            what,
            False,
            "an X.509 (gpgsm) signature, which Weft does not verify",
            format="x509",
        )
    return Verdict(commit, what, False, "a signature in no format Weft knows")


@dataclasses.dataclass(frozen=True, slots=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str


def _run(
    args: list[str], work: Path, stdin: bytes = b"", env: dict[str, str] | None = None
) -> _Run:
    try:
        done = subprocess.run(
            args,
            input=stdin,
            capture_output=True,
            cwd=work,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **(env or {})},
            timeout=TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return _Run(127, "", f"{args[0]} is not installed")
    except subprocess.TimeoutExpired:
        return _Run(124, "", f"{args[0]} took over {TIMEOUT:.0f} s")
    return _Run(
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


def _verify_openpgp(what: str, commit: str, work: Path, keys: TrustedKeys) -> Verdict:
    def refused(reason: str, signer: str = "", key: str = "") -> Verdict:
        return Verdict(commit, what, False, reason, signer, key, "openpgp")

    if not keys.openpgp:
        return refused("an OpenPGP signature, and no OpenPGP key is trusted")
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    base = [GPG, "--batch", "--no-tty", "--no-autostart", "--no-options"]
    (work / "keys.asc").write_text("\n".join(keys.openpgp))
    imported = _run([*base, "--quiet", "--import", "keys.asc"], work, env=env)
    if imported.returncode != 0:
        return refused(f"gpg could not import the trusted keys: {_last_line(imported.stderr)}")
    checked = _run(
        [*base, "--trust-model", "always", "--status-fd", "1", "--verify", "signature", "payload"],
        work,
        env=env,
    )
    status: dict[str, list[str]] = {}
    for line in checked.stdout.splitlines():
        if line.startswith("[GNUPG:] "):
            word, *rest = line[len("[GNUPG:] ") :].split(" ")
            status.setdefault(word, rest)
    uid = ""
    for word in ("GOODSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG", "BADSIG"):
        if word in status:
            uid = " ".join(status[word][1:])
    fingerprint = ""
    if "VALIDSIG" in status:
        fields = status["VALIDSIG"]
        fingerprint = fields[-1] if len(fields) >= 10 else fields[0]
    elif "ERRSIG" in status and len(status["ERRSIG"]) >= 7:
        fingerprint = status["ERRSIG"][6] if status["ERRSIG"][6] != "-" else status["ERRSIG"][0]
    elif "ERRSIG" in status:
        fingerprint = status["ERRSIG"][0]
    if "BADSIG" in status:
        return refused("bad signature: the content does not match it", uid, fingerprint)
    if "EXPKEYSIG" in status:
        return refused("key expired", uid, fingerprint)
    if "REVKEYSIG" in status:
        return refused("key revoked", uid, fingerprint)
    if "EXPSIG" in status:
        return refused("signature expired", uid, fingerprint)
    if "NO_PUBKEY" in status:
        return refused("unknown key: not among the trusted keys", "", fingerprint)
    if "GOODSIG" in status and "VALIDSIG" in status and checked.returncode == 0:
        return Verdict(commit, what, True, "good signature", uid, fingerprint, "openpgp")
    return refused(f"gpg could not verify it: {_last_line(checked.stderr) or 'no verdict'}")


def _verify_ssh(what: str, commit: str, work: Path, keys: TrustedKeys) -> Verdict:
    def refused(reason: str, signer: str = "", key: str = "") -> Verdict:
        return Verdict(commit, what, False, reason, signer, key, "ssh")

    payload = (work / "payload").read_bytes()
    # Which key made it, whether trusted or not, so a refusal can name it.
    made = _run(
        [SSH_KEYGEN, "-Y", "check-novalidate", "-n", NAMESPACE, "-s", "signature"], work, payload
    )
    found = re.search(r"key (SHA256:[A-Za-z0-9+/=]+)", made.stdout + made.stderr)
    key = found[1] if found else ""
    if made.returncode != 0:
        return refused("bad signature: the content does not match it", "", key)
    if not keys.allowed_signers:
        return refused("an SSH signature, and no SSH key is trusted", "", key)
    (work / "allowed_signers").write_text("\n".join(keys.allowed_signers) + "\n")
    principals = _run(
        [SSH_KEYGEN, "-Y", "find-principals", "-f", "allowed_signers", "-s", "signature"], work
    )
    if principals.returncode != 0:
        if "expired" in principals.stderr:
            return refused("key expired (valid-before in the allowed signers)", "", key)
        if "not yet valid" in principals.stderr:
            return refused("key not yet valid (valid-after in the allowed signers)", "", key)
        return refused("unknown key: not among the allowed signers", "", key)
    principal = principals.stdout.splitlines()[0].strip() if principals.stdout.strip() else ""
    checked = _run(
        [SSH_KEYGEN, "-Y", "verify", "-f", "allowed_signers", "-I", principal, "-n", NAMESPACE,
         "-s", "signature"],
        work,
        payload,
    )  # fmt: skip
    if checked.returncode == 0 and checked.stdout.startswith("Good"):
        return Verdict(commit, what, True, "good signature", principal, key, "ssh")
    if "expired" in checked.stderr:
        return refused("key expired (valid-before in the allowed signers)", principal, key)
    return refused(
        f"ssh-keygen could not verify it: {_last_line(checked.stderr) or 'no verdict'}",
        principal,
        key,
    )


def _check_signer_line(line: str, file: Path, number: int) -> None:
    fields = _fields(line)
    for i, field in enumerate(fields[1:], 1):
        if _KEY_TYPE.match(field):
            if i + 1 < len(fields) and _BASE64.match(fields[i + 1]):
                return
            break
    raise TrustedKeysError(
        f"{file}:{number}: not an allowed-signers line "
        "(principals [options] key-type base64-key [comment]) nor an armored OpenPGP key"
    )


def _fields(line: str) -> list[str]:
    """Split on blanks outside double quotes (options may quote spaces)."""
    out, current, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch in " \t" and not quoted:
            if current:
                out.append(current)
            current = ""
            continue
        current += ch
    if current:
        out.append(current)
    return out


def _key_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Files under `paths`, sorted; in a directory, hidden entries are skipped (a mounted
    ConfigMap's `..data` links and `..<timestamp>` folders hold the same keys again)."""
    for path in paths:
        if path.is_dir():
            try:
                entries = sorted(path.iterdir())
            except OSError as e:
                raise TrustedKeysError(f"{path}: cannot list trusted keys ({e})") from None
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_file():
                    yield entry
        elif path.is_file():
            yield path
        else:
            raise TrustedKeysError(f"{path}: no such file or directory of trusted keys")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    """A private temporary directory (0700), removed afterwards whatever happened."""
    # Short and under /tmp: gpg's socket paths must fit in 108 bytes even if one is made.
    path = Path(tempfile.mkdtemp(prefix="weft-sig-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


def tools_missing(keys: TrustedKeys) -> list[str]:
    """The tools `keys` need that are not on PATH (checked at start, so one missing fails
    fast rather than refusing every revision)."""
    needed = [SSH_KEYGEN]  # names the key of any SSH signature, trusted or not
    if keys.openpgp:
        needed.append(GPG)
    return [t for t in needed if shutil.which(t) is None]
