"""What can go wrong with identity, as exception types whose messages are safe to print.

No message here ever carries key material: errors name files, CA ids, serials and times only.
Every error raised while reading a key is re-raised `from None`, so a traceback cannot show the
library's own exception (which might quote the input) either.
"""

from __future__ import annotations

from collections.abc import Sequence


class IdentityError(Exception):
    """Base of every identity failure the command line reports as a plain message."""


class RefusedCAError(IdentityError):
    """A user-provided CA failed one or more checks; `problems` says which, one line each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"refusing the CA in {source}: " + "; ".join(self.problems))


class NotInitialisedError(IdentityError):
    """The state directory holds no CA yet."""


class AlreadyInitialisedError(IdentityError):
    """`init` on a state directory that already has a CA: a second root is what `rotate` is for."""


class RolloverError(IdentityError):
    """A trust-bundle transition that would break the rollover (for example, two at once)."""


class IssuanceError(IdentityError):
    """Certificates cannot be issued: the active CA expired, or the trust domain does not match."""
