"""Credentials for the intent repository: an SSH key, an HTTPS token, or a user and password.

They come from the environment or from files it names (`*_FILE`, for mounted Secrets), never
from the repository. Every secret is held in a `Secret`, whose `repr` and `str` are redacted and
which refuses to be pickled, so no status, log line, exception or debug dump can carry it.

| variable | for |
|---|---|
| `WEFT_GIT_TOKEN`, `WEFT_GIT_TOKEN_FILE` | HTTPS token, sent as the password of HTTP basic auth |
| `WEFT_GIT_TOKEN_AUTH=bearer` | send the token as `Authorization: Bearer` instead |
| `WEFT_GIT_USERNAME` | basic-auth user (default with a token: `x-access-token`) |
| `WEFT_GIT_PASSWORD`, `WEFT_GIT_PASSWORD_FILE` | HTTPS password (needs `WEFT_GIT_USERNAME`) |
| `WEFT_GIT_SSH_KEY_FILE` | SSH private key (OpenSSH or PEM format) |
| `WEFT_GIT_SSH_PASSPHRASE`, `WEFT_GIT_SSH_PASSPHRASE_FILE` | its passphrase, if any |
| `WEFT_GIT_SSH_KNOWN_HOSTS_FILE` | host keys to trust (default `~/.ssh/known_hosts`) |
| `WEFT_WEBHOOK_SECRET`, `WEFT_WEBHOOK_SECRET_FILE` | the webhook's HMAC key (`secret_from_env`) |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from reconciler.gitsource import urls
from reconciler.gitsource.errors import CredentialsError

TOKEN_USERNAME = "x-access-token"  # what GitHub expects beside a token; GitLab accepts any


class Secret:
    """A credential value that never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")


@dataclasses.dataclass(frozen=True, slots=True)
class Anonymous:
    """No credentials: public repositories, `git://`, a local path."""

    def secrets(self) -> tuple[str, ...]:
        return ()


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """An HTTPS access token."""

    token: Secret
    username: str = TOKEN_USERNAME
    bearer: bool = False  # send `Authorization: Bearer <token>` rather than basic auth

    def secrets(self) -> tuple[str, ...]:
        return (self.token.reveal(),)


@dataclasses.dataclass(frozen=True, slots=True)
class BasicAuth:
    """An HTTPS user and password."""

    username: str
    password: Secret

    def secrets(self) -> tuple[str, ...]:
        return (self.password.reveal(),)


@dataclasses.dataclass(frozen=True, slots=True)
class SshKey:
    """An SSH key pair from files, and the known_hosts file the server's host key must be in."""

    private_key: Path
    known_hosts: Path
    username: str = ""  # the URL's user wins; then this; then "git"
    public_key: Path | None = None  # derived from the private key when absent
    passphrase: Secret | None = None

    def secrets(self) -> tuple[str, ...]:
        return (self.passphrase.reveal(),) if self.passphrase else ()


Credentials = Anonymous | Token | BasicAuth | SshKey


def check(url: str, auth: Credentials) -> None:
    """Refuse credentials that do not fit the URL, before anything is sent anywhere."""
    scheme = urls.scheme(url)
    if isinstance(auth, SshKey) and scheme != "ssh":
        raise CredentialsError(f"an SSH key was configured for {urls.display(url)}, not an SSH URL")
    if isinstance(auth, Token | BasicAuth):
        if scheme not in ("http", "https"):
            raise CredentialsError(
                f"HTTPS credentials were configured for {urls.display(url)}, not an HTTP(S) URL"
            )
        if scheme == "http" and not urls.is_loopback(url):
            raise CredentialsError(
                f"refusing to send credentials over plain http:// to {urls.display(url)}; "
                "use https://"
            )


def from_env(url: str, environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials the environment configures for `url` (SSH for ssh URLs, else HTTPS)."""
    env = os.environ if environ is None else environ
    if urls.scheme(url) == "ssh":
        return _ssh_from_env(env)
    if urls.scheme(url) not in ("http", "https"):
        return Anonymous()
    token = secret_from_env(env, "WEFT_GIT_TOKEN")
    password = secret_from_env(env, "WEFT_GIT_PASSWORD")
    username = env.get("WEFT_GIT_USERNAME", "")
    if token is not None and password is not None:
        _refuse("both WEFT_GIT_TOKEN and WEFT_GIT_PASSWORD are set; set one")
    mode = env.get("WEFT_GIT_TOKEN_AUTH", "basic")
    if mode not in ("basic", "bearer"):
        _refuse(f"WEFT_GIT_TOKEN_AUTH is {mode!r}; it must be 'basic' or 'bearer'")
    if token is not None:
        return Token(token, username or TOKEN_USERNAME, bearer=mode == "bearer")
    if password is not None:
        if not username:
            _refuse("WEFT_GIT_PASSWORD is set without WEFT_GIT_USERNAME")
        return BasicAuth(username, password)
    return Anonymous()


def _ssh_from_env(env: Mapping[str, str]) -> Credentials:
    key = env.get("WEFT_GIT_SSH_KEY_FILE", "")
    if not key:
        return Anonymous()
    known = env.get("WEFT_GIT_SSH_KNOWN_HOSTS_FILE", "")
    known_hosts = Path(known) if known else Path.home() / ".ssh" / "known_hosts"
    if not Path(key).is_file():
        _refuse(f"WEFT_GIT_SSH_KEY_FILE: {key} is not a readable file")
    if not known_hosts.is_file():
        _refuse(
            f"{known_hosts} is not a readable file: SSH needs the server's host key in a "
            "known_hosts file (WEFT_GIT_SSH_KNOWN_HOSTS_FILE), unknown hosts are refused"
        )
    return SshKey(
        Path(key),
        known_hosts,
        username=env.get("WEFT_GIT_USERNAME", ""),
        passphrase=secret_from_env(env, "WEFT_GIT_SSH_PASSPHRASE"),
    )


def secret_from_env(env: Mapping[str, str], name: str) -> Secret | None:
    """`name` from the environment, or the contents of the file `name_FILE` points at.

    None when neither is set; `CredentialsError` when both are, or the value is empty. The
    webhook secret is read this way too: `secret_from_env(os.environ, "WEFT_WEBHOOK_SECRET")`.
    """
    direct, file = env.get(name), env.get(f"{name}_FILE")
    if direct is not None and file is not None:
        _refuse(f"both {name} and {name}_FILE are set; set one")
    if file is not None:
        try:
            text = Path(file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            _refuse(f"{name}_FILE: cannot read {file} ({type(e).__name__})")
        direct = text.rstrip("\r\n")
    if direct is None:
        return None
    if not direct:
        _refuse(f"{name} is empty")
    return Secret(direct)


def _refuse(message: str) -> NoReturn:
    raise CredentialsError(message)
