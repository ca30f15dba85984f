"""One fetch's conversation with the remote: credentials, host verification, error translation.

pygit2 asks `credentials()` when the server wants authentication. We answer once: a second
call means the server refused what we sent (libgit2 would otherwise replay it up to 15 times),
so it becomes an `AuthError` at once. `certificate_check()` refuses whatever libgit2 could not
verify: a TLS certificate that does not chain to a trusted root, or an SSH host key that is not
in the known_hosts file.

SSH host keys: pygit2 hands the callback no key (it passes `None`), but libgit2's libssh2
transport checks the key against `<homedir>/.ssh/known_hosts` before calling it and says so in
`valid`. `known_hosts_home` points libgit2's home directory at a private copy of the configured
known_hosts file for the length of one SSH fetch, so that check runs against our file, and the
callback refuses anything it did not match: unknown hosts and changed keys alike.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pygit2
from pygit2.enums import CredentialType

from reconciler.gitsource import credentials, urls
from reconciler.gitsource.errors import (
    AuthError,
    CredentialsError,
    FetchError,
    GitSourceError,
    HostVerificationError,
)

# libgit2's home directory is process-wide: SSH fetches take turns setting it.
_HOMEDIR_LOCK = threading.Lock()


class Callbacks(pygit2.RemoteCallbacks):
    """Credentials and host verification for one fetch of `url`."""

    def __init__(self, url: str, auth: credentials.Credentials) -> None:
        super().__init__()
        self._url = url
        self._auth = auth
        self._answered = False
        self.refused_host = ""

    def __repr__(self) -> str:
        return f"Callbacks({urls.display(self._url)!r}, {type(self._auth).__name__})"

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: CredentialType
    ) -> pygit2.Username | pygit2.UserPass | pygit2.Keypair:
        shown = urls.display(self._url)
        auth = self._auth
        if allowed_types & CredentialType.USERNAME and not (allowed_types & CredentialType.SSH_KEY):
            return pygit2.Username(self._ssh_user(username_from_url))
        if self._answered:
            raise AuthError(shown, f"the server refused the {_kind(auth)}")
        self._answered = True
        if isinstance(auth, credentials.SshKey) and allowed_types & CredentialType.SSH_KEY:
            return pygit2.Keypair(
                self._ssh_user(username_from_url),
                str(auth.public_key) if auth.public_key else None,
                str(auth.private_key),
                auth.passphrase.reveal() if auth.passphrase else "",
            )
        if allowed_types & CredentialType.USERPASS_PLAINTEXT:
            if isinstance(auth, credentials.BasicAuth):
                return pygit2.UserPass(auth.username, auth.password.reveal())
            if isinstance(auth, credentials.Token) and not auth.bearer:
                return pygit2.UserPass(auth.username, auth.token.reveal())
            if isinstance(auth, credentials.Token):  # the bearer header went with the request
                raise AuthError(shown, "the server refused the bearer token")
        if isinstance(auth, credentials.Anonymous):
            raise AuthError(shown, "the server asks for credentials and none are configured")
        raise AuthError(
            shown, f"the server does not accept this kind of credential ({_kind(auth)})"
        )

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        if not valid:
            self.refused_host = host.decode(errors="replace")
        return valid

    def custom_headers(self) -> list[str] | None:
        if isinstance(self._auth, credentials.Token) and self._auth.bearer:
            return [f"Authorization: Bearer {self._auth.token.reveal()}"]
        return None

    def _ssh_user(self, from_url: str | None) -> str:
        if from_url:
            return from_url
        if isinstance(self._auth, credentials.SshKey) and self._auth.username:
            return self._auth.username
        return "git"


def _kind(auth: credentials.Credentials) -> str:
    return {
        credentials.SshKey: "SSH key",
        credentials.Token: "token",
        credentials.BasicAuth: "user and password",
        credentials.Anonymous: "anonymous access",
    }[type(auth)]


@contextlib.contextmanager
def known_hosts_home(auth: credentials.Credentials, scratch: Path) -> Iterator[None]:
    """For an SSH key, make libgit2 check host keys against its known_hosts file (see above)."""
    if not isinstance(auth, credentials.SshKey):
        yield
        return
    try:
        known = auth.known_hosts.read_bytes()
    except OSError as e:
        raise CredentialsError(
            f"cannot read the known_hosts file {auth.known_hosts} ({type(e).__name__})"
        ) from None
    home = scratch / "ssh-home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = home / ".ssh" / "known_hosts.new"
    staged.write_bytes(known)
    os.replace(staged, home / ".ssh" / "known_hosts")
    with _HOMEDIR_LOCK:
        previous = pygit2.settings.homedir
        pygit2.settings.homedir = str(home)
        try:
            yield
        finally:
            if previous is not None:
                pygit2.settings.homedir = previous


def translate(
    error: Exception, url: str, auth: credentials.Credentials, callbacks: Callbacks
) -> GitSourceError:
    """A pygit2 failure as our typed error, its message scrubbed of every secret."""
    shown = urls.display(url)
    if isinstance(error, GitSourceError):
        return error
    reason = scrub(str(error) or type(error).__name__, url, auth)
    if callbacks.refused_host or isinstance(error, pygit2.CertificateError):
        if isinstance(auth, credentials.SshKey):
            return HostVerificationError(
                shown,
                f"the SSH host key of {callbacks.refused_host or urls.host(url)} is not in "
                f"{auth.known_hosts} (or does not match it); unknown hosts are refused",
            )
        return HostVerificationError(
            shown,
            f"the TLS certificate of {callbacks.refused_host or urls.host(url)} is not trusted "
            "(not from a trusted CA, expired, or not for this host); "
            "a private CA goes in the bundle SSL_CERT_FILE names",
        )
    lowered = reason.lower()
    if "authenticat" in lowered or "401" in lowered or "403" in lowered:
        return AuthError(shown, reason)
    return FetchError(shown, reason)


def scrub(text: str, url: str, auth: credentials.Credentials) -> str:
    text = text.replace(url, urls.display(url))
    for secret in auth.secrets():
        text = text.replace(secret, "***")
    return text
