"""Workload identity in a cluster: the CA and certificates in Secrets, `weft ca --kubeconfig`,
and a full CA rollover carried through by the Kubernetes target."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reconciler import identity
from reconciler.identity.secretstore import ConcurrentChangeError
from reconciler.targets.kubernetes import KubernetesTarget
from tests.kube import ControlPlane
from tests.kubeapps import desired_template
from tests.pki import CA

IMAGE = "registry.example/weft:test"


def weft_ca(kube: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "ca", *args,
         "--kubeconfig", str(kube.admin_kubeconfig)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def trust_state(kube: ControlPlane) -> dict[str, Any]:
    secret = kube.admin().get("Secret", "weft-system", "weft-trust")
    assert secret is not None
    state: dict[str, Any] = json.loads(base64.b64decode(secret["data"]["state.json"]))
    return state


def leaf_and_bundle(kube: ControlPlane, ns: str, sa: str) -> tuple[x509.Certificate, list[Any]]:
    secret = kube.admin().get("Secret", ns, f"weft-identity-{sa}")
    assert secret is not None
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    bundle = x509.load_pem_x509_certificates(base64.b64decode(secret["data"]["ca.crt"]))
    return leaf, bundle


def test_ca_status_and_a_full_rollover_in_the_cluster(template_cluster: ControlPlane) -> None:
    clock = [datetime.datetime.now(datetime.UTC)]
    target = KubernetesTarget(template_cluster.admin(), image=IMAGE, clock=lambda: clock[0])
    desired = desired_template()
    plan = target.plan(desired, target.observe())
    target.apply(plan)
    target.prune(plan)
    (old,) = [a["caId"] for a in trust_state(template_cluster)["authorities"]]

    status = weft_ca(template_cluster, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    ids = {w["spiffeId"] for w in report["identities"]}
    assert {w["issuer"] for w in report["identities"]} == {old}
    assert ids == {i.spiffe_id for i in desired.identities}
    assert "PRIVATE KEY" not in status.stdout

    rotated = weft_ca(template_cluster, "rotate", "--grace", "1m")
    assert rotated.returncode == 0, rotated.stderr
    roles = {a["caId"]: a["role"] for a in trust_state(template_cluster)["authorities"]}
    assert roles[old] == "active"
    (new,) = [ca for ca in roles if ca != old]
    # Every workload trusts both CAs before the new one issues anything.
    leaf, bundle = leaf_and_bundle(template_cluster, "b", "api")
    assert len(bundle) == 2
    assert leaf.issuer == bundle[0].subject or leaf.issuer == bundle[1].subject

    # The reconciler carries the rollover on: after the grace, the new CA issues, every
    # certificate is replaced, and the old CA is retired once nothing chains to it.
    for _ in range(10):
        clock[0] += datetime.timedelta(minutes=1)
        target.maintain()
        if len(trust_state(template_cluster)["authorities"]) == 1:
            break
    (only,) = trust_state(template_cluster)["authorities"]
    assert only["caId"] == new
    assert template_cluster.admin().get("Secret", "weft-system", f"weft-ca-{old}") is None
    new_ca = template_cluster.admin().get("Secret", "weft-system", f"weft-ca-{new}")
    assert new_ca is not None
    new_cert = x509.load_pem_x509_certificate(base64.b64decode(new_ca["data"]["ca.crt"]))
    for ident in desired.identities:
        leaf, bundle = leaf_and_bundle(template_cluster, ident.namespace, ident.service_account)
        assert leaf.issuer == new_cert.subject, ident.spiffe_id
        assert [c.subject for c in bundle] == [new_cert.subject]


def tls_secret(name: str, cert: bytes, key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "weft-system"},
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


def test_the_mesh_ca_from_a_users_secret(template_cluster: ControlPlane) -> None:
    api = template_cluster.admin()
    user = CA.create("platform team intermediate-less root")
    key = user.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    api.create(tls_secret("company-ca", user.pem, key))
    target = KubernetesTarget(api, image=IMAGE, ca_secret=("weft-system", "company-ca"))
    plan = target.plan(desired_template(), target.observe())
    target.apply(plan)
    leaf, bundle = leaf_and_bundle(template_cluster, "b", "api")
    assert leaf.issuer == user.cert.subject
    assert [c.subject for c in bundle] == [user.cert.subject]


def test_a_secret_that_is_not_a_ca_is_refused_and_nothing_is_issued(
    template_cluster: ControlPlane,
) -> None:
    api = template_cluster.admin()
    leaf = CA.create().issue("spiffe://weft.local/ns/a/sa/web")
    api.create(tls_secret("not-a-ca", leaf.chain, leaf.key))
    target = KubernetesTarget(api, image=IMAGE, ca_secret=("weft-system", "not-a-ca"))
    plan = target.plan(desired_template(), target.observe())
    with pytest.raises(
        identity.RefusedCAError, match=r"Secret weft-system/not-a-ca.*not a CA"
    ) as refused:
        target.apply(plan)
    assert "PRIVATE KEY" not in str(refused.value)
    assert api.get("Secret", "weft-system", "weft-trust") is None
    assert api.get("Secret", "b", "weft-identity-api") is None
    assert api.get("ConfigMap", "b", "api-weft-sidecar") is None

    # The same refusal from the command line, with the Secret named.
    done = weft_ca(template_cluster, "init", "--from-secret", "weft-system/not-a-ca")
    assert done.returncode == 1
    assert "Secret weft-system/not-a-ca" in done.stderr
    assert "the certificate is not a CA" in done.stderr


def test_a_concurrent_change_of_the_trust_state_is_not_overwritten(
    template_cluster: ControlPlane,
) -> None:
    api = template_cluster.admin()
    target = KubernetesTarget(api, image=IMAGE)
    plan = target.plan(desired_template(), target.observe())
    target.apply(plan)
    store = target.store
    with store.lock():
        assert store.read_state() is not None
        # Another weft (a `weft ca rotate` from a workstation) writes the trust state now.
        trust = api.get("Secret", "weft-system", "weft-trust")
        assert trust is not None
        trust["metadata"].setdefault("annotations", {})["other"] = "writer"
        api.replace(trust)
        with pytest.raises(ConcurrentChangeError, match="changed while this step ran"):
            store.write_bundle(b"a bundle read before the other write\n", [])
    after = api.get("Secret", "weft-system", "weft-trust")
    assert after is not None
    assert after["metadata"]["annotations"]["other"] == "writer"
    assert (
        base64.b64decode(after["data"]["bundle.pem"]) != b"a bundle read before the other write\n"
    )


def test_an_identity_secret_that_is_not_weft_s_is_never_taken_over(
    template_cluster: ControlPlane,
) -> None:
    api = template_cluster.admin()
    api.create({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "weft-identity-web",
        "namespace": "a"}, "data": {"mine": base64.b64encode(b"yes").decode()},
    })  # fmt: skip
    target = KubernetesTarget(api, image=IMAGE)
    plan = target.plan(desired_template(), target.observe())
    with pytest.raises(
        identity.IdentityError, match="Secret a/weft-identity-web exists and is not"
    ):
        target.apply(plan)
    secret = api.get("Secret", "a", "weft-identity-web")
    assert secret is not None
    assert secret["data"] == {"mine": base64.b64encode(b"yes").decode()}
