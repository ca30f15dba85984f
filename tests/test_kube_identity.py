"""Workload identity in a cluster: the CA and certificates in Secrets, `weft ca --kubeconfig`,
and a full CA rollover carried through by the Kubernetes target."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
from typing import Any

from cryptography import x509

from reconciler.targets.kubernetes import KubernetesTarget
from tests.kube import ControlPlane
from tests.kubeapps import desired_template

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
