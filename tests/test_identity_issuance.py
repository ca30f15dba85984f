"""Issuing for a mesh: idempotent restarts, renewal when due, and a full CA rollover.

Time is injected (`now`), so a day of renewals and a rollover run in milliseconds.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from reconciler import compiler, identity
from reconciler.compiler.identities import Identity
from reconciler.identity import authority, renewal, workload
from tests.conftest import load

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(hours=24)
MIN = datetime.timedelta(minutes=1)
TD = "test.local"


def ident(ns: str, sa: str) -> Identity:
    return Identity(f"spiffe://{TD}/ns/{ns}/sa/{sa}", ns, sa, (f"{ns}/{sa}",))


FLEET = [ident(f"ns{i % 7}", f"sa{i}") for i in range(40)]


def ensure(
    store: identity.Store,
    now: datetime.datetime,
    identities: list[Identity] = FLEET,
    lifetime: datetime.timedelta = DAY,
) -> identity.IssueReport:
    return identity.ensure(store, identities, trust_domain=TD, lifetime=lifetime, now=now)


@pytest.fixture
def store(tmp_path: Path) -> identity.FileStore:
    return identity.FileStore(tmp_path / "state")


def leaves(store: identity.Store) -> dict[identity.WorkloadKey, x509.Certificate]:
    found = {}
    for key in store.workloads():
        stored = store.read_workload(key)
        assert stored is not None
        assert stored.leaf is not None
        found[key] = stored.leaf
    return found


def test_first_run_generates_the_ca_and_issues_everything(store: identity.FileStore) -> None:
    report = ensure(store, T0)
    assert report.generated_ca is not None
    assert (len(report.issued), report.reused) == (40, 0)
    assert {d.reason for d in report.issued} == {"new"}
    assert len(store.workloads()) == 40


def test_a_restart_reuses_every_valid_certificate(store: identity.FileStore) -> None:
    ensure(store, T0)
    before = leaves(store)
    report = ensure(store, T0 + datetime.timedelta(hours=1))
    assert (len(report.issued), report.reused, report.generated_ca) == (0, 40, None)
    assert report.bundles_updated == 0
    assert leaves(store) == before


def test_renewal_issues_only_what_is_due(store: identity.FileStore) -> None:
    ensure(store, T0)
    window = identity.RenewalWindow()
    schedules = {k: renewal.schedule(c, window) for k, c in leaves(store).items()}
    # About half are due by now (in whole seconds, as issuance reads the clock).
    now = identity.clock.normalise(sorted(s.renew_at for s in schedules.values())[20])
    due = {k for k, s in schedules.items() if s.due(now)}
    report = ensure(store, now)
    assert {d.key for d in report.issued} == due
    assert {d.reason for d in report.issued} == {"renewal due"}
    assert 0 < len(due) < 40
    assert report.reused == 40 - len(due)


def test_expired_certificates_are_reissued(store: identity.FileStore) -> None:
    ensure(store, T0)
    report = ensure(store, T0 + 2 * DAY)
    assert {d.reason for d in report.issued} == {"expired"}
    assert len(report.issued) == 40


def test_a_shorter_lifetime_applies_at_once(store: identity.FileStore) -> None:
    ensure(store, T0)
    report = ensure(store, T0 + MIN, lifetime=datetime.timedelta(hours=2))
    assert {d.reason for d in report.issued} == {"certificateLifetime shortened"}
    assert ensure(store, T0 + 2 * MIN, lifetime=datetime.timedelta(hours=2)).issued == ()
    longer = ensure(store, T0 + 3 * MIN, lifetime=datetime.timedelta(hours=48))
    assert longer.issued == ()  # a longer lifetime waits for the next renewal


def test_identities_no_longer_in_the_mesh_are_kept_until_they_expire(
    store: identity.FileStore,
) -> None:
    ensure(store, T0)
    report = ensure(store, T0 + MIN, identities=FLEET[:30])
    assert (len(report.kept), report.removed) == (10, ())
    later = ensure(store, T0 + 2 * DAY, identities=FLEET[:30])
    assert len(later.removed) == 10
    assert len(store.workloads()) == 30


def test_a_different_trust_domain_is_refused(store: identity.FileStore) -> None:
    ensure(store, T0)
    with pytest.raises(
        identity.IssuanceError,
        match=r"is for trust domain 'test\.local', the mesh's is 'other\.local'",
    ):
        identity.ensure(store, FLEET, trust_domain="other.local", lifetime=DAY, now=T0)


def test_an_expired_ca_refuses_to_issue(store: identity.FileStore) -> None:
    identity.ca.init(store, TD, T0 - 3650 * DAY)  # the generated root lives ten years
    with pytest.raises(identity.IssuanceError, match=r"expired at .*start a rollover"):
        ensure(store, T0 + DAY)


def issuers(store: identity.Store) -> set[str]:
    return {s.issuer or "?" for s in identity.status.read(store, T0).workloads}


def bundle_of(store: identity.FileStore, key: identity.WorkloadKey) -> list[str]:
    """The CA ids whose roots are in this workload's ca.crt."""
    stored = store.read_workload(key)
    assert stored is not None
    roots = x509.load_pem_x509_certificates(stored.bundle)
    state = store.read_state()
    assert state is not None
    by_fingerprint = {authority.fingerprint(store.read_ca_chain(c)[-1]): c for c in state.trusted}
    return [by_fingerprint[authority.fingerprint(r)] for r in roots]


def test_a_full_rollover_never_leaves_a_workload_without_trust_in_its_peers(
    store: identity.FileStore,
) -> None:
    """At every step, every workload's ca.crt trusts the issuer of every live certificate."""
    ensure(store, T0)
    old = store.read_state()
    assert old is not None
    a = old.active.ca_id

    def check_mutual_trust() -> None:
        live = issuers(store)
        for key in store.workloads():
            assert live <= set(bundle_of(store, key)), key

    state = identity.ca.rotate(store, T0 + MIN, grace=MIN)
    b = state.trusted[1]
    check_mutual_trust()
    assert all(bundle_of(store, k) == [a, b] for k in store.workloads())  # trusted before use

    early = ensure(store, T0 + MIN + MIN / 2)  # inside the grace: the old CA still issues
    assert early.issued == ()
    assert early.changes == ()
    assert issuers(store) == {a}

    promoted = ensure(store, T0 + 2 * MIN)
    assert [c.kind for c in promoted.changes] == ["promoted"]
    assert {d.reason for d in promoted.issued} == {"issued by a CA that no longer issues"}
    assert issuers(store) == {b}
    check_mutual_trust()
    assert all(bundle_of(store, k) == [b, a] for k in store.workloads())  # old still trusted

    draining = ensure(store, T0 + 2 * MIN + MIN / 2)  # drained, but within the grace
    assert draining.changes == ()
    retired = ensure(store, T0 + 3 * MIN)
    assert [c.kind for c in retired.changes] == ["retired"]
    assert retired.issued == ()
    assert retired.bundles_updated == 40
    assert all(bundle_of(store, k) == [b] for k in store.workloads())
    assert not (store.root / "ca" / a).exists()  # the retired CA's key is gone
    final = store.read_state()
    assert final is not None
    assert final.trusted == (b,)


def test_a_second_rotation_during_a_rollover_is_refused(store: identity.FileStore) -> None:
    ensure(store, T0)
    identity.ca.rotate(store, T0 + MIN)
    with pytest.raises(identity.RolloverError, match="already under way"):
        identity.ca.rotate(store, T0 + MIN)


def test_init_twice_is_refused(store: identity.FileStore) -> None:
    identity.ca.init(store, TD, T0)
    with pytest.raises(identity.AlreadyInitialisedError, match="already has a CA"):
        identity.ca.init(store, TD, T0)


def test_the_template_mesh_gets_one_certificate_per_service_account(
    template: Path, store: identity.FileStore
) -> None:
    mesh = load(template)
    needed = compiler.identities.required(mesh)
    report = identity.ensure(
        store,
        needed,
        trust_domain=mesh.spec.trust_domain,
        lifetime=datetime.timedelta(milliseconds=mesh.spec.certificate_lifetime),
        now=T0,
    )
    assert len(report.issued) == len(needed) == 6
    for key, leaf in leaves(store).items():
        spiffe = workload.spiffe_id_of(leaf)
        assert spiffe is not None
        assert (spiffe.namespace, spiffe.service_account) == (key.namespace, key.service_account)
