"""The intent repository as revisions: fetch, resolve the ref, read files at a commit.

    from reconciler import gitsource
    source = gitsource.GitSource(url, "main", cache_dir, gitsource.credentials.from_env(url))
    revision = source.fetch()                  # Revision, or None when unchanged
    verdict = source.verify(revision)          # signatures.Verdict, with trusted keys
    snapshot = source.snapshot(revision)       # reconciler.intent.files.Snapshot

Around it: `PollSchedule` and `Backoff` say when to fetch next, `WebhookReceiver` asks for a
fetch now. Nothing here knows what the intent means or what applies it; every git operation is
pygit2's, none shells out to git (signatures are checked by gpg and ssh-keygen).
"""

from __future__ import annotations

from reconciler.gitsource import credentials, refspec, semver, signatures, webhook
from reconciler.gitsource.credentials import Secret
from reconciler.gitsource.errors import (
    AuthError,
    CacheError,
    CredentialsError,
    FetchError,
    GitSourceError,
    HostVerificationError,
    RefNotFoundError,
    RefSpecError,
    TrustedKeysError,
    UrlError,
)
from reconciler.gitsource.revision import Revision
from reconciler.gitsource.schedule import Backoff, PollSchedule
from reconciler.gitsource.source import GitSource
from reconciler.gitsource.webhook import WebhookReceiver

__all__ = [
    "AuthError",
    "Backoff",
    "CacheError",
    "CredentialsError",
    "FetchError",
    "GitSource",
    "GitSourceError",
    "HostVerificationError",
    "PollSchedule",
    "RefNotFoundError",
    "RefSpecError",
    "Revision",
    "Secret",
    "TrustedKeysError",
    "UrlError",
    "WebhookReceiver",
    "credentials",
    "refspec",
    "semver",
    "signatures",
    "webhook",
]
