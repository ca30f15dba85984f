"""Why a git source could not give a revision: one exception type per failure a caller treats
differently.

Every message names the remote by its URL without credentials and never contains a secret;
a caller can put it in status and logs as it is. After any of these the cache is still usable
and the last good revision stays in force.
"""

from __future__ import annotations


class GitSourceError(Exception):
    """Base of everything a git source raises."""


class RefSpecError(GitSourceError, ValueError):
    """The ref to follow can never resolve: not a name, a range or a commit."""


class UrlError(GitSourceError, ValueError):
    """The remote URL has a transport Weft does not speak."""


class CredentialsError(GitSourceError, ValueError):
    """The credentials configured in the environment or files are unusable or contradictory."""


class FetchError(GitSourceError):
    """The remote could not be reached or did not answer as a git server."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot fetch {url}: {reason}")
        self.url = url
        self.reason = reason


class AuthError(FetchError):
    """The remote asked for credentials and none were configured, or it refused them."""


class HostVerificationError(FetchError):
    """The SSH host key is not in the known_hosts file, or the TLS certificate is not valid."""


class CacheError(GitSourceError):
    """The local cache directory cannot be created, read or written."""


class RefNotFoundError(GitSourceError):
    """The fetch succeeded but nothing on the remote matches the ref spec."""


class TrustedKeysError(GitSourceError, ValueError):
    """The trusted keys configured for signed revisions cannot be read, or there are none."""
