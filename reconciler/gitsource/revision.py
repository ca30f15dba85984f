"""`Revision`: one commit of the intent repository and the ref it was reached by.

Printed as `<ref>@sha1:<commit>` (`main@sha1:…`, `v1.4.0@sha1:…`), the name status, events and
every ProxyConfig carry, and the same form `intent.files.from_git` gives.
"""

from __future__ import annotations

import dataclasses
import re

_TEXT = re.compile(r"^(?P<ref>.+)@sha1:(?P<commit>[0-9a-f]{40})$")


@dataclasses.dataclass(frozen=True, slots=True)
class Revision:
    ref: str  # the branch, the tag (for a range: the tag it chose) or the pinned commit
    commit: str  # 40 hexadecimal digits

    def __str__(self) -> str:
        return f"{self.ref}@sha1:{self.commit}"

    @classmethod
    def parse(cls, text: str) -> Revision:
        """Read a revision back from its printed form (say, a stored lastAppliedRevision)."""
        m = _TEXT.match(text)
        if m is None:
            raise ValueError(f"{text!r} is not a revision of the form <ref>@sha1:<commit>")
        return cls(m["ref"], m["commit"])
