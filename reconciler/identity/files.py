"""The local runtime's identity store: files under `<state>/identity/`.

    identity/
      state.json                      the trust state (rollover.TrustState); no keys
      bundle.pem                      every trusted root, for operators and other tools
      ca/<ca-id>/ca.crt, ca.key       each CA in the bundle: its chain to the root, and its key
      workloads/<ns>/<sa>/tls.crt     leaf + intermediates
      workloads/<ns>/<sa>/tls.key     the workload key
      workloads/<ns>/<sa>/ca.crt      the trust bundle

Directories are 0700, keys 0600, certificates 0644 (public, but only reachable through the
0700 directories). Every write is atomic (see `atomic`). Many workloads are written at once from
a small thread pool: each write waits on fsync, and concurrent fsyncs share one journal commit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from reconciler.identity import atomic, keys
from reconciler.identity.authority import Authority
from reconciler.identity.errors import IdentityError
from reconciler.identity.rollover import TrustState
from reconciler.identity.store import StoredWorkload, WorkloadKey
from reconciler.identity.workload import WorkloadCertificate, pem

KEY_MODE = 0o600
CERT_MODE = 0o644
WRITERS = 16
_WORKLOAD_FILES = ("tls.crt", "tls.key", "ca.crt")
T = TypeVar("T")


class FileStore:
    """`store.Store` on a local directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "identity"

    @property
    def location(self) -> str:
        return str(self.root)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        atomic.private_directory(self.root)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, KEY_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_state(self) -> TrustState | None:
        path = self.root / "state.json"
        try:
            return TrustState.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise IdentityError(f"{path} is not a Weft trust state ({e}); restore it") from None

    def write_state(self, state: TrustState) -> None:
        atomic.private_directory(self.root)
        text = json.dumps(state.as_json(), indent=2, sort_keys=True) + "\n"
        atomic.write_file(self.root / "state.json", text.encode(), CERT_MODE)

    def read_authority(self, ca_id: str) -> Authority:
        path = self.root / "ca" / ca_id
        files = atomic.read_directory(path, ("ca.crt", "ca.key"))
        if files is None:
            raise IdentityError(f"CA {ca_id} is in the trust state but not in {self.root / 'ca'}")
        chain = tuple(x509.load_pem_x509_certificates(files["ca.crt"]))
        return Authority(chain, keys.load(files["ca.key"], str(path / "ca.key")))

    def write_authority(self, authority: Authority) -> None:
        atomic.write_directory(
            self.root / "ca" / authority.ca_id,
            {
                "ca.crt": (pem(authority.chain), CERT_MODE),
                "ca.key": (authority.key_pem(), KEY_MODE),
            },
        )

    def remove_authority(self, ca_id: str) -> None:
        shutil.rmtree(self.root / "ca" / ca_id, ignore_errors=True)

    def workloads(self) -> list[WorkloadKey]:
        base = self.root / "workloads"
        if not base.is_dir():
            return []
        return sorted(
            WorkloadKey(ns.name, sa.name)
            for ns in base.iterdir()
            if ns.is_dir()
            for sa in ns.iterdir()
            if (sa / atomic.DATA).is_symlink()
        )

    def read_ca_chain(self, ca_id: str) -> tuple[x509.Certificate, ...]:
        files = atomic.read_directory(self.root / "ca" / ca_id, ("ca.crt",))
        if files is None:
            raise IdentityError(f"CA {ca_id} is in the trust state but not in {self.root / 'ca'}")
        return tuple(x509.load_pem_x509_certificates(files["ca.crt"]))

    def read_workload(self, key: WorkloadKey) -> StoredWorkload | None:
        files = atomic.read_directory(self._workload_dir(key), _WORKLOAD_FILES)
        if files is None:
            return None
        try:
            chain = tuple(x509.load_pem_x509_certificates(files["tls.crt"]))
        except ValueError:
            return StoredWorkload(key, (), False, files["ca.crt"])
        try:
            matches = keys.load(files["tls.key"], "tls.key").matches(chain[0])
        except keys.UnsupportedKeyError:
            matches = False
        return StoredWorkload(key, chain, matches, files["ca.crt"])

    def write_workloads(self, certificates: Sequence[WorkloadCertificate], bundle: bytes) -> None:
        def write(cert: WorkloadCertificate) -> None:
            key = WorkloadKey(cert.spiffe_id.namespace, cert.spiffe_id.service_account)
            atomic.write_directory(
                self._workload_dir(key),
                {
                    "tls.crt": (cert.chain_pem(), CERT_MODE),
                    "tls.key": (cert.key.pem(), KEY_MODE),
                    "ca.crt": (bundle, CERT_MODE),
                },
            )

        _each(write, certificates)

    def write_bundle(self, bundle: bytes, workloads: Sequence[WorkloadKey]) -> None:
        atomic.private_directory(self.root)
        atomic.write_file(self.root / "bundle.pem", bundle, CERT_MODE)

        def rewrite(key: WorkloadKey) -> None:
            path = self._workload_dir(key)
            files = atomic.read_directory(path, _WORKLOAD_FILES)
            if files is None:
                return
            atomic.write_directory(
                path,
                {
                    "tls.crt": (files["tls.crt"], CERT_MODE),
                    "tls.key": (files["tls.key"], KEY_MODE),
                    "ca.crt": (bundle, CERT_MODE),
                },
            )

        _each(rewrite, workloads)

    def remove_workload(self, key: WorkloadKey) -> None:
        shutil.rmtree(self._workload_dir(key), ignore_errors=True)

    def _workload_dir(self, key: WorkloadKey) -> Path:
        for part in (key.namespace, key.service_account):
            # Names come from validated intent (DNS labels); this guards the path all the same.
            if not part or part.startswith(".") or "/" in part:
                raise IdentityError(f"{key} cannot name a directory")
        return self.root / "workloads" / key.namespace / key.service_account


def _each(write: Callable[[T], None], items: Sequence[T]) -> None:
    """Run `write` over `items` concurrently; the first failure is raised after all finish."""
    if len(items) <= 1:
        for item in items:
            write(item)
        return
    with concurrent.futures.ThreadPoolExecutor(min(WRITERS, len(items))) as pool:
        for future in [pool.submit(write, item) for item in items]:
            future.result()
