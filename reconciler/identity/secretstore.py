"""The Kubernetes identity store: the CA and the trust state in Secrets in `weft-system`, and one
Secret per service account in its namespace, as a Secret volume mounts it.

    weft-system/weft-trust            state.json (rollover.TrustState), bundle.pem; no keys
    weft-system/weft-ca-<ca-id>       ca.crt (its chain to the root), ca.key
    <ns>/weft-identity-<sa>           tls.crt, tls.key, ca.crt (type kubernetes.io/tls)

This module knows Secrets only as names holding bytes: a `SecretBackend` (the Kubernetes target's,
over the API) moves them. Every Secret is written whole in one request, so a reader never sees a
certificate with another certificate's key, and the kubelet swaps a mounted Secret's files
atomically (`..data`). Unchanged Secrets are not written, so a no-op reconcile writes nothing.

The store caches what it read for one `lock()` span: `ensure` reads every workload, and one LIST
is far cheaper than a GET per service account.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from cryptography import x509

from reconciler.identity import keys, user_ca
from reconciler.identity.authority import Authority
from reconciler.identity.clock import normalise
from reconciler.identity.errors import IdentityError, RefusedCAError
from reconciler.identity.rollover import TrustState
from reconciler.identity.store import StoredWorkload, WorkloadKey
from reconciler.identity.workload import WorkloadCertificate, pem

SYSTEM_NAMESPACE = "weft-system"
TRUST_SECRET = "weft-trust"
CA_PREFIX = "weft-ca-"
WORKLOAD_PREFIX = "weft-identity-"
PART_LABEL = "weft.dev/part"
LABELS = {"app.kubernetes.io/managed-by": "weft"}
WORKLOAD_SELECTOR = f"app.kubernetes.io/managed-by=weft,{PART_LABEL}=identity"

SecretData = Mapping[str, bytes]


class SecretBackend(Protocol):
    """Reads and writes whole Secrets. Raises on any failure but "not found"."""

    def read_secret(self, namespace: str, name: str) -> SecretData | None: ...

    def read_versioned(self, namespace: str, name: str) -> tuple[SecretData, str] | None:
        """The Secret's data and its resourceVersion, for a write that must not lose a race."""
        ...

    def list_secrets(self, selector: str) -> dict[tuple[str, str], SecretData]:
        """Every Secret matching a label selector, in every namespace, by (namespace, name)."""
        ...

    def write_secret(
        self,
        namespace: str,
        name: str,
        data: SecretData,
        labels: Mapping[str, str],
        secret_type: str,
        *,
        resource_version: str | None = None,
    ) -> str:
        """Write the whole Secret; with `resource_version`, only if it is still that version
        (`ConcurrentChangeError` otherwise). Refuses a Secret of that name that is not Weft's.
        Returns the new resourceVersion."""
        ...

    def delete_secret(self, namespace: str, name: str) -> None:
        """Delete it if it is Weft's (labelled); a Secret that is not Weft's is left alone."""
        ...


class ConcurrentChangeError(IdentityError):
    """The trust state changed between this step's read and its write (another `weft` — a
    `weft ca rotate` beside the reconciler). Nothing of the step was recorded; run it again."""


def workload_secret_name(service_account: str) -> str:
    return f"{WORKLOAD_PREFIX}{service_account}"


class SecretStore:
    """`store.Store` on Kubernetes Secrets."""

    def __init__(self, backend: SecretBackend, namespace: str = SYSTEM_NAMESPACE) -> None:
        self.backend = backend
        self.namespace = namespace
        self._lock = threading.Lock()
        self._workloads: dict[WorkloadKey, SecretData] | None = None
        # The weft-trust Secret's resourceVersion as this step read it: every write of the
        # trust state is conditional on it, so two writers (the reconciler and `weft ca rotate`)
        # cannot silently undo each other.
        self._trust: tuple[SecretData, str] | None = None

    @property
    def location(self) -> str:
        return f"Secrets in {self.namespace} and weft-identity-* in each namespace"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        # One process at a time writes: the reconciler is a singleton by leader election, and
        # this lock orders the threads of the one that leads.
        with self._lock:
            self._workloads = None
            self._trust = self.backend.read_versioned(self.namespace, TRUST_SECRET)
            try:
                yield
            finally:
                self._workloads = None
                self._trust = None

    # ------------------------------------------------------------------ the trust state and CAs

    def _read_trust(self) -> SecretData | None:
        if self._trust is not None:
            return self._trust[0]
        return self.backend.read_secret(self.namespace, TRUST_SECRET)

    def _write_trust(self, data: SecretData) -> None:
        version = self._trust[1] if self._trust is not None else None
        new = self.backend.write_secret(
            self.namespace,
            TRUST_SECRET,
            data,
            {**LABELS, PART_LABEL: "trust"},
            "Opaque",
            resource_version=version,
        )
        if self._trust is not None:
            self._trust = (data, new)

    def read_state(self) -> TrustState | None:
        data = self._read_trust()
        if data is None or "state.json" not in data:
            return None
        try:
            return TrustState.from_json(json.loads(data["state.json"]))
        except (ValueError, KeyError, TypeError) as e:
            raise IdentityError(
                f"Secret {self.namespace}/{TRUST_SECRET} is not a Weft trust state ({e});"
                " restore it"
            ) from None

    def write_state(self, state: TrustState) -> None:
        text = (json.dumps(state.as_json(), indent=2, sort_keys=True) + "\n").encode()
        current = self._read_trust() or {}
        if current.get("state.json") == text:
            return
        self._write_trust({**current, "state.json": text})

    def read_authority(self, ca_id: str) -> Authority:
        data = self._ca(ca_id, need_key=True)
        chain = tuple(x509.load_pem_x509_certificates(data["ca.crt"]))
        where = f"Secret {self.namespace}/{CA_PREFIX}{ca_id}"
        return Authority(chain, keys.load(data["ca.key"], f"{where} ca.key"))

    def read_ca_chain(self, ca_id: str) -> tuple[x509.Certificate, ...]:
        return tuple(x509.load_pem_x509_certificates(self._ca(ca_id, need_key=False)["ca.crt"]))

    def _ca(self, ca_id: str, *, need_key: bool) -> SecretData:
        data = self.backend.read_secret(self.namespace, CA_PREFIX + ca_id)
        wanted = ("ca.crt", "ca.key") if need_key else ("ca.crt",)
        if data is None or any(k not in data for k in wanted):
            raise IdentityError(
                f"CA {ca_id} is in the trust state but Secret {self.namespace}/{CA_PREFIX}{ca_id}"
                " is missing or incomplete"
            )
        return data

    def write_authority(self, authority: Authority) -> None:
        self.backend.write_secret(
            self.namespace,
            CA_PREFIX + authority.ca_id,
            {"ca.crt": pem(authority.chain), "ca.key": authority.key_pem()},
            {**LABELS, PART_LABEL: "ca"},
            "Opaque",
        )

    def remove_authority(self, ca_id: str) -> None:
        self.backend.delete_secret(self.namespace, CA_PREFIX + ca_id)

    def provided_ca(self, namespace: str, name: str, now: datetime.datetime) -> Authority:
        """A user's CA from a `kubernetes.io/tls` Secret (`tls.crt`: the CA and its chain to the
        root; `tls.key`: its key), checked as `weft ca init --from-pem` checks files;
        `RefusedCAError` says what is wrong, naming the Secret, never the key."""
        where = f"Secret {namespace}/{name}"
        data = self.backend.read_secret(namespace, name)
        if data is None:
            raise RefusedCAError(where, ["it does not exist"])
        missing = [k for k in ("tls.crt", "tls.key") if k not in data]
        if missing:
            raise RefusedCAError(where, [f"it has no {k}" for k in missing])
        return user_ca.load(
            data["tls.crt"], data["tls.key"], normalise(now), f"{where} tls.crt", f"{where} tls.key"
        )

    # ------------------------------------------------------------------ workloads

    def _all_workloads(self) -> dict[WorkloadKey, SecretData]:
        if self._workloads is None:
            self._workloads = {
                WorkloadKey(ns, name.removeprefix(WORKLOAD_PREFIX)): data
                for (ns, name), data in self.backend.list_secrets(WORKLOAD_SELECTOR).items()
                if name.startswith(WORKLOAD_PREFIX)
            }
        return self._workloads

    def workloads(self) -> list[WorkloadKey]:
        return sorted(self._all_workloads())

    def read_workload(self, key: WorkloadKey) -> StoredWorkload | None:
        data = self._all_workloads().get(key)
        if data is None or any(k not in data for k in ("tls.crt", "tls.key", "ca.crt")):
            return None
        try:
            chain = tuple(x509.load_pem_x509_certificates(data["tls.crt"]))
        except ValueError:
            return StoredWorkload(key, (), False, data["ca.crt"])
        try:
            matches = keys.load(data["tls.key"], "tls.key").matches(chain[0])
        except keys.UnsupportedKeyError:
            matches = False
        return StoredWorkload(key, chain, matches, data["ca.crt"])

    def write_workloads(self, certificates: Sequence[WorkloadCertificate], bundle: bytes) -> None:
        for cert in certificates:
            key = WorkloadKey(cert.spiffe_id.namespace, cert.spiffe_id.service_account)
            self._write_workload(
                key, {"tls.crt": cert.chain_pem(), "tls.key": cert.key.pem(), "ca.crt": bundle}
            )

    def write_bundle(self, bundle: bytes, workloads: Sequence[WorkloadKey]) -> None:
        current = self._read_trust() or {}
        if current.get("bundle.pem") != bundle:
            self._write_trust({**current, "bundle.pem": bundle})
        stored = self._all_workloads()
        for key in workloads:
            data = stored.get(key)
            if data is not None and data.get("ca.crt") != bundle:
                self._write_workload(key, {**data, "ca.crt": bundle})

    def _write_workload(self, key: WorkloadKey, data: SecretData) -> None:
        self.backend.write_secret(
            key.namespace,
            workload_secret_name(key.service_account),
            data,
            {**LABELS, PART_LABEL: "identity", "weft.dev/service-account": key.service_account},
            "kubernetes.io/tls",
        )
        if self._workloads is not None:
            self._workloads[key] = data

    def remove_workload(self, key: WorkloadKey) -> None:
        self.backend.delete_secret(key.namespace, workload_secret_name(key.service_account))
        if self._workloads is not None:
            self._workloads.pop(key, None)
