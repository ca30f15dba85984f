"""Workload identity: the mesh CA, SPIFFE certificates, renewal and trust-bundle rollover.

    from reconciler import identity
    store = identity.FileStore(state_dir)
    identity.ca.init(store, "example.org", now)          # or from_pem=(cert_path, key_path)
    report = identity.ensure(store, compiler.identities.required(mesh), ...)
    identity.ca.rotate(store, now)                       # start a rollover
    status = identity.status.read(store, now)

Only this package reads a CA key. Callers that issue get an `Issuer` (`identity.ca.issuer`),
which cannot return the key; keys print as their curve name and refuse to be pickled.
"""

from __future__ import annotations

from reconciler.identity import ca, clock, metrics, renewal, rollover, status
from reconciler.identity.authority import Issuer
from reconciler.identity.errors import (
    AlreadyInitialisedError,
    IdentityError,
    IssuanceError,
    NotInitialisedError,
    RefusedCAError,
    RolloverError,
)
from reconciler.identity.files import FileStore
from reconciler.identity.issuance import IssueReport, ensure, plan
from reconciler.identity.renewal import RenewalWindow
from reconciler.identity.spiffe import SpiffeId
from reconciler.identity.store import Store, StoredWorkload, WorkloadKey
from reconciler.identity.workload import WorkloadCertificate

__all__ = [
    "AlreadyInitialisedError",
    "FileStore",
    "IdentityError",
    "IssuanceError",
    "IssueReport",
    "Issuer",
    "NotInitialisedError",
    "RefusedCAError",
    "RenewalWindow",
    "RolloverError",
    "SpiffeId",
    "Store",
    "StoredWorkload",
    "WorkloadCertificate",
    "WorkloadKey",
    "ca",
    "clock",
    "ensure",
    "metrics",
    "plan",
    "renewal",
    "rollover",
    "status",
]
