"""The mesh CA's lifecycle on a store: create it (generated or provided) and start a rollover.

Each step validates everything before it writes anything, so a refused CA or a refused rollover
leaves the store exactly as it was. Writes go in the order that keeps every crash point safe:
the new CA's files, then the trust bundle everywhere, then the trust state that makes them count.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reconciler.identity import authority, rollover, user_ca, workload
from reconciler.identity.authority import Authority, Issuer
from reconciler.identity.clock import normalise
from reconciler.identity.errors import (
    AlreadyInitialisedError,
    NotInitialisedError,
    RefusedCAError,
    RolloverError,
)
from reconciler.identity.rollover import TrustState
from reconciler.identity.store import Store


def read_provided(cert_path: Path, key_path: Path, now: datetime.datetime) -> Authority:
    """A user's CA from PEM files, checked (`user_ca`); `RefusedCAError` says what is wrong."""
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as e:
        raise RefusedCAError(
            f"{cert_path} and {key_path}", [f"cannot read {e.filename}: {e.strerror}"]
        ) from None
    return user_ca.load(cert_pem, key_pem, normalise(now), str(cert_path), str(key_path))


def init(
    store: Store,
    trust_domain: str,
    now: datetime.datetime,
    *,
    from_pem: tuple[Path, Path] | None = None,
    provided: Authority | None = None,
) -> str:
    """Give the store its first CA: the one in `from_pem` (certificate file, key file), one
    already read and checked (`provided`, e.g. from a Kubernetes Secret), or a generated root.
    Returns the CA id."""
    now = normalise(now)
    provided = read_provided(*from_pem, now) if from_pem else provided
    with store.lock():
        if store.read_state() is not None:
            raise AlreadyInitialisedError(
                f"{store.location} already has a CA; `weft ca rotate` replaces it without downtime"
            )
        ca = provided or authority.generate(trust_domain, now)
        store.write_authority(ca)
        store.write_bundle(bundle_pem([ca.chain]), store.workloads())
        store.write_state(rollover.start(trust_domain, ca.ca_id, now))
        return ca.ca_id


def rotate(
    store: Store,
    now: datetime.datetime,
    *,
    from_pem: tuple[Path, Path] | None = None,
    provided: Authority | None = None,
    grace: datetime.timedelta = rollover.DEFAULT_GRACE,
) -> TrustState:
    """Start a rollover to the CA in `from_pem` (or `provided`), or a new generated root:
    trusted now, issuing after `grace`."""
    now = normalise(now)
    provided = read_provided(*from_pem, now) if from_pem else provided
    with store.lock():
        state = read_state(store)
        chains = {ca_id: store.read_ca_chain(ca_id) for ca_id in state.trusted}
        new = provided or authority.generate(state.trust_domain, now)
        for ca_id, chain in chains.items():
            if workload.key_id(chain[0]) == new.key_id:
                raise RolloverError(
                    f"the new CA uses the same key as CA {ca_id}, already in the trust bundle; "
                    "a rollover needs a new key"
                )
        rotated = rollover.rotate(state, new.ca_id, now, grace)  # refuses before any write
        chains[new.ca_id] = new.chain
        store.write_authority(new)
        store.write_bundle(
            bundle_pem(chains[ca_id] for ca_id in rotated.trusted), store.workloads()
        )
        store.write_state(rotated)
        return rotated


def issuer(store: Store) -> Issuer:
    """The down-scoped handle on the CA that issues now, for callers outside this package."""
    state = read_state(store)
    return store.read_authority(state.active.ca_id).issuer()


def read_state(store: Store) -> TrustState:
    state = store.read_state()
    if state is None:
        raise NotInitialisedError(f"{store.location} has no CA yet; run `weft ca init` first")
    return state


def bundle_pem(chains: Iterable[Sequence[x509.Certificate]]) -> bytes:
    """The trust bundle: each CA's root once, in bundle order (two intermediates may share one)."""
    roots: dict[str, x509.Certificate] = {}
    for chain in chains:
        roots.setdefault(authority.fingerprint(chain[-1]), chain[-1])
    return b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots.values())
