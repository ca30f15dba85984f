"""Where identity lives between runs: the interface every target's storage implements.

The local runtime keeps files under a state directory (`files.FileStore`); the Kubernetes target
keeps the CA in a Secret in `weft-system` and one Secret per service account (`tls.crt`,
`tls.key`, `ca.crt`). Everything above this interface — issuance, rollover, status — is the same
for both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Protocol

from cryptography import x509

from reconciler.identity.authority import Authority
from reconciler.identity.rollover import TrustState
from reconciler.identity.workload import WorkloadCertificate


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class WorkloadKey:
    """Certificates are stored per service account, as Kubernetes mounts them."""

    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service_account}"


@dataclasses.dataclass(frozen=True, slots=True)
class StoredWorkload:
    """A stored certificate as issuance sees it: public parts, and whether its key is usable."""

    key: WorkloadKey
    chain: tuple[x509.Certificate, ...]  # leaf first; empty when the files cannot be read
    key_matches: bool  # the private key is present, readable and belongs to the leaf
    bundle: bytes  # the stored `ca.crt`, compared with the trust bundle it should be

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None


class Store(Protocol):
    """Persistent identity state. Writes are atomic: a crash leaves the old value or the new."""

    @property
    def location(self) -> str:
        """Where this store keeps things, for messages (a path, or a cluster and namespace)."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Held for a whole read-decide-write step, so two reconcilers never interleave."""
        ...

    def read_state(self) -> TrustState | None: ...

    def write_state(self, state: TrustState) -> None: ...

    def read_authority(self, ca_id: str) -> Authority:
        """A CA with its key, to issue from; only issuance calls this."""
        ...

    def read_ca_chain(self, ca_id: str) -> tuple[x509.Certificate, ...]:
        """A CA's certificate and the chain above it, without the key: for status."""
        ...

    def write_authority(self, authority: Authority) -> None: ...

    def remove_authority(self, ca_id: str) -> None: ...

    def workloads(self) -> list[WorkloadKey]: ...

    def read_workload(self, key: WorkloadKey) -> StoredWorkload | None: ...

    def write_workloads(self, certificates: Sequence[WorkloadCertificate], bundle: bytes) -> None:
        """Store each certificate with its key and the trust bundle (`ca.crt`)."""
        ...

    def write_bundle(self, bundle: bytes, workloads: Sequence[WorkloadKey]) -> None:
        """Replace the store's copy of the trust bundle and the `ca.crt` of these workloads."""
        ...

    def remove_workload(self, key: WorkloadKey) -> None: ...
