"""SPIFFE IDs of workloads: `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`."""

from __future__ import annotations

import dataclasses
import re

from reconciler.identity.errors import IssuanceError

# The same shape the intent schema accepts (reconciler.intent.model.SPIFFE_ID), with groups.
_PATTERN = re.compile(r"spiffe://([a-z0-9._-]+)/ns/([a-z0-9-]+)/sa/([a-z0-9.-]+)")


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        match = _PATTERN.fullmatch(uri)
        if match is None:
            raise IssuanceError(
                f"{uri!r} is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>)"
            )
        return cls(*match.groups())

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"
