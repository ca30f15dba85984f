"""Issuing what a mesh needs: decide per identity (pure), then issue and store in one step.

`plan` compares the identities a revision needs with what the store holds and gives each one a
reason to issue, or none (reuse). `ensure` runs the whole step under the store's lock: advance
the rollover, issue what is missing or due, bring every `ca.crt` up to date, retire drained CAs.
Run twice with nothing due, the second run issues nothing: restarts are free.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterable, Mapping, Sequence

from cryptography import x509

from reconciler.compiler.identities import Identity
from reconciler.identity import authority, ca, renewal, rollover, workload
from reconciler.identity.authority import Authority
from reconciler.identity.clock import normalise
from reconciler.identity.errors import IssuanceError
from reconciler.identity.renewal import RenewalWindow
from reconciler.identity.spiffe import SpiffeId
from reconciler.identity.store import Store, StoredWorkload, WorkloadKey

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    identity: Identity
    reason: str | None  # why to issue; None: the stored certificate is reused

    @property
    def key(self) -> WorkloadKey:
        return WorkloadKey(self.identity.namespace, self.identity.service_account)


@dataclasses.dataclass(frozen=True, slots=True)
class IssueReport:
    issued: tuple[Decision, ...]
    reused: int
    generated_ca: str | None  # the CA generated on first use, if this run made one
    changes: tuple[rollover.Change, ...]
    bundles_updated: int
    removed: tuple[WorkloadKey, ...]  # expired, and no longer needed by the mesh
    kept: tuple[WorkloadKey, ...]  # no longer needed by the mesh, kept until they expire


def plan(
    identities: Sequence[Identity],
    stored: Mapping[WorkloadKey, StoredWorkload],
    *,
    active: Authority,
    lifetime: datetime.timedelta,
    now: datetime.datetime,
    window: RenewalWindow,
) -> list[Decision]:
    """One decision per identity, in the order given."""
    return [
        Decision(i, _reason(i, stored.get(key), active, lifetime=lifetime, now=now, window=window))
        for i in identities
        for key in [WorkloadKey(i.namespace, i.service_account)]
    ]


def _reason(
    identity: Identity,
    stored: StoredWorkload | None,
    active: Authority,
    *,
    lifetime: datetime.timedelta,
    now: datetime.datetime,
    window: RenewalWindow,
) -> str | None:
    if stored is None:
        return "new"
    leaf = stored.leaf
    if leaf is None:
        return "stored certificate unreadable"
    if not stored.key_matches:
        return "stored key missing or not the certificate's"
    if workload.spiffe_id_of(leaf) != SpiffeId.parse(identity.spiffe_id):
        return "SPIFFE ID changed"
    if workload.issuer_key_id(leaf) != active.key_id:
        return "issued by a CA that no longer issues"
    if now >= leaf.not_valid_after_utc:
        return "expired"
    if renewal.schedule(leaf, window).due(now):
        return "renewal due"
    # A lifetime shortened in the Mesh applies now, not a day later: an operator shortens it
    # for a reason. A longer one waits for the next renewal.
    if leaf.not_valid_after_utc - leaf.not_valid_before_utc > lifetime + workload.CLOCK_SKEW:
        return "certificateLifetime shortened"
    return None


def live_issuers(
    certificates: Iterable[x509.Certificate],
    authorities: Iterable[Authority],
    now: datetime.datetime,
) -> frozenset[str]:
    """Ids of the CAs that unexpired certificates chain to (matched by authority key id)."""
    by_key = {a.key_id: a.ca_id for a in authorities}
    found = {
        by_key.get(workload.issuer_key_id(c) or b"")
        for c in certificates
        if now < c.not_valid_after_utc
    }
    return frozenset(ca_id for ca_id in found if ca_id is not None)


def ensure(
    store: Store,
    identities: Sequence[Identity],
    *,
    trust_domain: str,
    lifetime: datetime.timedelta,
    now: datetime.datetime,
    window: RenewalWindow = RenewalWindow(),  # noqa: B008  # frozen, so one shared default is safe
) -> IssueReport:
    """Make the store hold a valid, not-due certificate for every identity in `identities`."""
    now = normalise(now)
    with store.lock():
        state, generated = _state_or_first_ca(store, trust_domain, now)
        authorities = {ca_id: store.read_authority(ca_id) for ca_id in state.trusted}
        stored = {k: w for k in store.workloads() if (w := store.read_workload(k)) is not None}

        # 1. An incoming CA whose grace has passed becomes the issuer before anything is issued.
        state, promoted = rollover.advance(state, now, _live(stored, authorities, now))
        # 2. Issue what is missing or due, with the bundle as it stands (old CAs still in it).
        active = authorities[state.active.ca_id]
        decisions = plan(
            identities, stored, active=active, lifetime=lifetime, now=now, window=window
        )
        due = [d for d in decisions if d.reason is not None]
        bundle = _bundle(state, authorities)
        issued = _issue(store, active, due, bundle, lifetime=lifetime, now=now)
        # 3. Certificates the mesh no longer needs: drop the expired, keep the rest until then.
        current, removed, kept = _prune(store, stored, {d.key for d in decisions}, now)
        current.update(issued)
        # 4. Retire drained CAs, bring every ca.crt up to date, then record the state: a crash
        #    before the state is written repeats this step, never skips it.
        state, retired = rollover.advance(state, now, _live(current, authorities, now))
        bundle = _bundle(state, authorities)
        stale = [k for k, w in current.items() if w.bundle != bundle]
        if stale:
            store.write_bundle(bundle, stale)
        store.write_state(state)
        for change in (*promoted, *retired):
            log.info("%s", change)
            if change.kind == "retired":  # only once the state no longer names it
                store.remove_authority(change.ca_id)
        return IssueReport(
            tuple(due),
            len(decisions) - len(due),
            generated,
            (*promoted, *retired),
            len(stale),
            tuple(removed),
            tuple(kept),
        )


def _state_or_first_ca(
    store: Store, trust_domain: str, now: datetime.datetime
) -> tuple[rollover.TrustState, str | None]:
    """The stored trust state; on first use, a generated CA and a state naming it."""
    state = store.read_state()
    generated = None
    if state is None:
        first = authority.generate(trust_domain, now)
        store.write_authority(first)
        store.write_bundle(ca.bundle_pem([first.chain]), [])
        state = rollover.start(trust_domain, first.ca_id, now)
        store.write_state(state)
        generated = first.ca_id
    if state.trust_domain != trust_domain:
        raise IssuanceError(
            f"the CA in {store.location} is for trust domain {state.trust_domain!r}, "
            f"the mesh's is {trust_domain!r}; a trust domain change needs a new state directory"
        )
    return state, generated


def _issue(
    store: Store,
    active: Authority,
    due: Sequence[Decision],
    bundle: bytes,
    *,
    lifetime: datetime.timedelta,
    now: datetime.datetime,
) -> dict[WorkloadKey, StoredWorkload]:
    for d in due:
        log.info("issuing %s: %s", d.identity.spiffe_id, d.reason)
    issued = [active.issue(SpiffeId.parse(d.identity.spiffe_id), lifetime, now) for d in due]
    store.write_workloads(issued, bundle)
    return {
        d.key: StoredWorkload(d.key, (cert.certificate,), True, bundle)
        for d, cert in zip(due, issued, strict=True)
    }


def _prune(
    store: Store,
    stored: Mapping[WorkloadKey, StoredWorkload],
    needed: set[WorkloadKey],
    now: datetime.datetime,
) -> tuple[dict[WorkloadKey, StoredWorkload], list[WorkloadKey], list[WorkloadKey]]:
    """(what stays stored, removed, kept though not needed)."""
    current: dict[WorkloadKey, StoredWorkload] = {}
    removed: list[WorkloadKey] = []
    kept: list[WorkloadKey] = []
    for key, w in stored.items():
        if key not in needed:
            if w.leaf is None or now >= w.leaf.not_valid_after_utc:
                store.remove_workload(key)
                removed.append(key)
                continue
            kept.append(key)
        current[key] = w
    return current, removed, kept


def _bundle(state: rollover.TrustState, authorities: Mapping[str, Authority]) -> bytes:
    return ca.bundle_pem(authorities[ca_id].chain for ca_id in state.trusted)


def _live(
    stored: Mapping[WorkloadKey, StoredWorkload],
    authorities: Mapping[str, Authority],
    now: datetime.datetime,
) -> frozenset[str]:
    leaves = [w.leaf for w in stored.values() if w.leaf is not None]
    return live_issuers(leaves, authorities.values(), now)
