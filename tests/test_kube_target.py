"""The Kubernetes target against a real kube-apiserver: apply, no-op, drift, conflicts, prune.

Every test applies `mesh-repo-template` to the template's namespaces, whose workloads an
"application team" applied first under its own field manager.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from reconciler import compiler
from reconciler.targets import Plan
from reconciler.targets.kubernetes import ConflictError, KubernetesTarget
from reconciler.targets.kubernetes import objects as kobjects
from reconciler.targets.kubernetes.api import FencedError
from tests.conftest import TEMPLATE, load
from tests.kube import ControlPlane
from tests.kubeapps import APP_MANAGER, WORKLOADS, desired_template, resource_versions, workload

IMAGE = "registry.example/weft:test"
SERVICES = [
    ("a", "web"),
    ("a", "worker"),
    ("b", "api"),
    ("b", "cache"),
    ("c", "ledger"),
    ("c", "db"),
]


def reconcile(target: KubernetesTarget, desired: compiler.DesiredState) -> Plan:
    plan = target.plan(desired, target.observe())
    target.apply(plan)
    target.prune(plan)
    return plan


@pytest.fixture
def target(template_cluster: ControlPlane) -> KubernetesTarget:
    return KubernetesTarget(template_cluster.admin(), image=IMAGE)


def test_template_applied_with_every_object(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    desired = desired_template()
    plan = reconcile(target, desired)
    assert plan.of("create"), "a first apply creates"

    for ns, svc in SERVICES:
        cm = api.get("ConfigMap", ns, f"{svc}-weft-sidecar")
        assert cm is not None, f"{ns}/{svc} has no sidecar ConfigMap"
        config = json.loads(cm["data"]["proxyconfig.json"])
        assert config["workload"] == {
            "namespace": ns,
            "service": svc,
            "serviceAccount": desired.proxy_configs[(ns, svc)].workload.service_account,
            "spiffeId": desired.proxy_configs[(ns, svc)].workload.spiffe_id,
        }
        assert config["revision"] == desired.revision
        listeners = json.loads(cm["data"]["listeners.json"])
        assert listeners["outboundCapture"] == "127.0.0.1:15001"
        assert api.get("NetworkPolicy", ns, f"{svc}-weft") is not None
        assert api.get("Service", ns, f"{svc}-weft") is not None
    for subset in ("v1", "v2"):
        svc = api.get("Service", "b", f"api-{subset}-weft")
        assert svc is not None
        assert svc["spec"]["selector"] == {"app": "api", "version": subset}
        assert svc["spec"]["clusterIP"] == "None"

    # One Secret per service account, chaining to the CA Secret in weft-system.
    trust = api.get("Secret", "weft-system", "weft-trust")
    assert trust is not None
    state = json.loads(base64.b64decode(trust["data"]["state.json"]))
    (active,) = [a["caId"] for a in state["authorities"] if a["role"] == "active"]
    ca_secret = api.get("Secret", "weft-system", f"weft-ca-{active}")
    assert ca_secret is not None
    assert "ca.key" in ca_secret["data"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_secret["data"]["ca.crt"]))
    for ident in desired.identities:
        secret = api.get("Secret", ident.namespace, f"weft-identity-{ident.service_account}")
        assert secret is not None, ident
        assert secret["type"] == "kubernetes.io/tls"
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        assert leaf.issuer == ca.subject
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [ident.spiffe_id]

    # Injection: Weft's containers and volumes, and the app team's fields left as they were.
    for kind, ns, name, _, sa in WORKLOADS:
        live = api.get(kind, ns, name)
        assert live is not None
        pod = live["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["initContainers"]] == ["weft-capture", "weft-sidecar"]
        sidecar = pod["initContainers"][1]
        assert sidecar["image"] == IMAGE
        assert sidecar["restartPolicy"] == "Always"
        assert sidecar["securityContext"]["runAsUser"] == 1337
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["weft-certs"]["secret"]["secretName"] == f"weft-identity-{sa}"
        assert [c["name"] for c in pod["containers"]] == ["app"]
        assert pod["containers"][0]["image"] == f"registry.example/{name}:1.0"
        # The app's container is the app team's, the sidecar is Weft's.
        managers = {
            m["manager"]: json.dumps(m["fieldsV1"]) for m in live["metadata"]["managedFields"]
        }
        assert '"k:{\\"name\\":\\"app\\"}"' in managers[APP_MANAGER]
        assert '"k:{\\"name\\":\\"app\\"}"' not in managers["weft"]
        assert '"k:{\\"name\\":\\"weft-sidecar\\"}"' in managers["weft"]
        assert "initContainers" not in managers[APP_MANAGER]

    inventory = api.get("ConfigMap", "weft-system", "weft-inventory")
    assert inventory is not None
    packed = base64.b64decode(inventory["binaryData"]["objects.gz"])
    recorded = set(gzip.decompress(packed).decode().split())
    assert "ConfigMap/b/api-weft-sidecar" in recorded
    assert "NetworkPolicy/c/db-weft" in recorded


def test_second_reconcile_writes_nothing(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    desired = desired_template()
    reconcile(target, desired)
    before = resource_versions(api, ("a", "b", "c", "weft-system"))
    again = KubernetesTarget(api, image=IMAGE)  # a restarted reconciler, same cluster
    plan = reconcile(again, desired)
    assert plan.empty, plan.changes
    assert resource_versions(api, ("a", "b", "c", "weft-system")) == before


def test_kubectl_edit_of_a_weft_field_is_reverted(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    desired = desired_template()
    reconcile(target, desired)
    template_cluster.kubectl(
        "-n", "b", "patch", "configmap", "api-weft-sidecar", "--type=merge",
        "-p", json.dumps({"data": {"proxyconfig.json": "{}"}}),
    )  # fmt: skip
    template_cluster.kubectl(
        "-n", "a", "patch", "deployment", "web", "--type=json",
        "-p", json.dumps([{"op": "replace", "path": "/spec/template/spec/initContainers/1/image",
                           "value": "evil.example/proxy:1"}]),
    )  # fmt: skip
    # An edit of the app team's own field is theirs: Weft leaves it.
    template_cluster.kubectl(
        "-n", "a", "set", "image", "deployment/web", "app=registry.example/web:2.0"
    )

    plan = reconcile(target, desired)
    assert {c.key for c in plan.of("update")} == {
        "ConfigMap/b/api-weft-sidecar",
        "Deployment/a/web",
    }
    cm = api.get("ConfigMap", "b", "api-weft-sidecar")
    assert cm is not None
    assert json.loads(cm["data"]["proxyconfig.json"])["workload"]["service"] == "api"
    web = api.get("Deployment", "a", "web")
    assert web is not None
    pod = web["spec"]["template"]["spec"]
    assert pod["initContainers"][1]["image"] == IMAGE
    assert pod["containers"][0]["image"] == "registry.example/web:2.0"
    assert reconcile(target, desired).empty


def test_a_field_another_manager_applies_is_a_conflict_not_a_takeover(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    desired = desired_template()
    reconcile(target, desired)
    claim = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ledger-weft-sidecar", "namespace": "c"},
        "data": {"listeners.json": "{}\n"},
    }
    api.apply(claim, manager="other-gitops", force=True)
    with pytest.raises(ConflictError, match=r"listeners\.json.*other-gitops"):
        reconcile(target, desired)
    cm = api.get("ConfigMap", "c", "ledger-weft-sidecar")
    assert cm is not None
    assert cm["data"]["listeners.json"] == "{}\n"


def test_prune_removes_exactly_what_left_and_nothing_unlabelled(
    template_cluster: ControlPlane, target: KubernetesTarget, tmp_path: Path
) -> None:
    api = template_cluster.admin()
    reconcile(target, desired_template())
    # A hand-made object that shares a Weft name pattern but not its label, and a labelled one
    # Weft never recorded (another installation's, say): neither is Weft's to delete.
    api.create({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "db-weft-extra", "namespace": "c"}, "data": {}})  # fmt: skip
    api.create({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "stray", "namespace": "c", "labels": kobjects.MANAGED_BY},
                "data": {}})  # fmt: skip

    # The same intent without c/db.
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(TEMPLATE), str(repo)], check=True)
    services = (repo / "c" / "services.yaml").read_text()
    kept = [doc for doc in services.split("---") if "name: db" not in doc]
    (repo / "c" / "services.yaml").write_text("---".join(kept))
    policies = (repo / "c" / "policies.yaml").read_text()
    kept = [doc for doc in policies.split("---") if "services: [db]" not in doc]
    (repo / "c" / "policies.yaml").write_text("---".join(kept))
    desired = compiler.compile(load(repo, "main@sha1:" + "2" * 40))
    plan = reconcile(target, desired)

    assert {c.key for c in plan.of("delete")} == {
        "ConfigMap/c/db-weft-sidecar",
        "Service/c/db-weft",
        "NetworkPolicy/c/db-weft",
        "StatefulSet/c/db",
    }
    for kind, name in (("ConfigMap", "db-weft-sidecar"), ("Service", "db-weft"),
                       ("NetworkPolicy", "db-weft")):  # fmt: skip
        assert api.get(kind, "c", name) is None
    db = api.get("StatefulSet", "c", "db")
    assert db is not None, "the workload is the app team's; only the injection goes"
    pod = db["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [v["name"] for v in pod.get("volumes", [])] == []
    assert [c["name"] for c in pod["containers"]] == ["app"]
    assert kobjects.INJECTED not in (db["metadata"].get("annotations") or {})
    assert api.get("ConfigMap", "c", "db-weft-extra") is not None
    assert api.get("ConfigMap", "c", "stray") is not None
    assert api.get("ConfigMap", "c", "ledger-weft-sidecar") is not None


def test_a_namesake_that_is_not_weft_s_refuses_the_revision_whole(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    api.create({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ledger-weft-sidecar", "namespace": "c"},
                "data": {"mine": "yes"}})  # fmt: skip
    with pytest.raises(ConflictError, match="ConfigMap/c/ledger-weft-sidecar exists and is not"):
        reconcile(target, desired_template())
    # Nothing of the revision was written: not the other ConfigMaps, not one injection.
    assert api.get("ConfigMap", "a", "web-weft-sidecar") is None
    web = api.get("Deployment", "a", "web")
    assert web is not None
    assert "initContainers" not in web["spec"]["template"]["spec"]
    ledger = api.get("ConfigMap", "c", "ledger-weft-sidecar")
    assert ledger is not None
    assert ledger["data"] == {"mine": "yes"}


def test_a_workload_running_as_another_service_account_is_refused(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    kind, ns, name, labels, _ = WORKLOADS[0]
    api.apply(workload(kind, ns, name, labels, "default"), manager=APP_MANAGER)
    with pytest.raises(ConflictError, match="Deployment/a/web runs as service account 'default'"):
        reconcile(target, desired_template())
    assert api.get("ConfigMap", "a", "web-weft-sidecar") is None


def test_a_missing_namespace_refuses_the_revision(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    desired = desired_template()
    extra = dataclasses.replace(desired, discovery_services=[
        *desired.discovery_services,
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "x-weft", "namespace": "nowhere", "labels": kobjects.MANAGED_BY},
         "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
    ])  # fmt: skip
    with pytest.raises(ConflictError, match="namespace nowhere does not exist"):
        reconcile(target, extra)
    assert api.get("ConfigMap", "a", "web-weft-sidecar") is None


def test_kubectl_sees_weft_as_the_owner_of_its_fields(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    reconcile(target, desired_template())
    out = template_cluster.kubectl(
        "-n", "b", "get", "deployment", "api-v1", "--show-managed-fields", "-o", "json"
    )
    managers = {m["manager"]: m["operation"] for m in json.loads(out)["metadata"]["managedFields"]}
    assert managers["weft"] == "Apply"
    assert managers[APP_MANAGER] == "Apply"


def test_weft_diff_shows_what_would_change_and_exits_1(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    def diff() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "diff", "--target", "kubernetes",
             "--kubeconfig", str(template_cluster.admin_kubeconfig), "--image", IMAGE,
             str(TEMPLATE)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    before = diff()
    assert before.returncode == 1, before.stderr
    assert "create  ConfigMap/a/web-weft-sidecar" in before.stdout
    assert "update  Deployment/b/api-v1  (.metadata.annotations" in before.stdout  # injection
    api = template_cluster.admin()
    assert api.get("ConfigMap", "a", "web-weft-sidecar") is None, "diff writes nothing"

    reconcile(target, compiler.compile(load(TEMPLATE)))  # the revision diff computes too
    same = diff()
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no changes" in same.stdout

    template_cluster.kubectl(
        "-n", "c", "patch", "networkpolicy", "ledger-weft", "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/spec/ingress"}]),
    )  # fmt: skip
    drifted = diff()
    assert drifted.returncode == 1
    assert "update  NetworkPolicy/c/ledger-weft  (.spec.ingress)" in drifted.stdout


def test_a_field_weft_stops_applying_is_removed(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    """A subset comparison cannot see a removal; the applied-digest annotation does."""
    api = template_cluster.admin()
    desired = desired_template()
    reconcile(target, desired)
    services = []
    for svc in desired.discovery_services:
        copy = json.loads(json.dumps(svc))
        if copy["metadata"]["name"] == "api-v1-weft":
            copy["spec"]["selector"] = {"app": "api"}  # the version label is no longer wanted
        services.append(copy)
    plan = reconcile(target, dataclasses.replace(desired, discovery_services=services))
    assert [c.key for c in plan.changes] == ["Service/b/api-v1-weft"]
    live = api.get("Service", "b", "api-v1-weft")
    assert live is not None
    assert live["spec"]["selector"] == {"app": "api"}


def test_release_removes_what_another_manager_kept_of_the_injection(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    desired = desired_template()
    reconcile(target, desired)
    # kubectl set image takes ownership of the sidecar's image; then c/db leaves the mesh.
    template_cluster.kubectl(
        "-n", "c", "set", "image", "statefulset/db", "weft-sidecar=registry.example/other:1"
    )  # fmt: skip
    without_db = dataclasses.replace(
        desired,
        proxy_configs={k: v for k, v in desired.proxy_configs.items() if k != ("c", "db")},
        workloads={k: v for k, v in desired.workloads.items() if k != ("c", "db")},
        discovery_services=[
            s for s in desired.discovery_services if s["metadata"]["name"] != "db-weft"
        ],
        network_policies=[
            n for n in desired.network_policies if n["metadata"]["name"] != "db-weft"
        ],
    )
    reconcile(target, without_db)
    db = api.get("StatefulSet", "c", "db")
    assert db is not None
    pod = db["spec"]["template"]["spec"]
    assert [c["name"] for c in pod.get("initContainers", [])] == []
    assert [v["name"] for v in pod.get("volumes", [])] == []
    assert [c["name"] for c in pod["containers"]] == ["app"]


def test_a_removed_label_on_a_weft_object_is_drift_not_a_namesake(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    desired = desired_template()
    reconcile(target, desired)
    template_cluster.kubectl(
        "-n", "a", "label", "configmap", "web-weft-sidecar", "app.kubernetes.io/managed-by-"
    )  # fmt: skip
    plan = reconcile(target, desired)
    assert [c.key for c in plan.changes] == ["ConfigMap/a/web-weft-sidecar"]
    cm = api.get("ConfigMap", "a", "web-weft-sidecar")
    assert cm is not None
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "weft"


def test_unsafe_injections_refuse_the_revision(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    api = template_cluster.admin()
    host = workload("Deployment", "a", "web", {"app": "web"}, "web")
    host["spec"]["template"]["spec"]["hostNetwork"] = True
    api.apply(host, manager=APP_MANAGER)
    template_cluster.kubectl(
        "label", "namespace", "c", "pod-security.kubernetes.io/enforce=baseline"
    )
    with pytest.raises(ConflictError) as refused:
        reconcile(target, desired_template())
    assert "Deployment/a/web uses hostNetwork" in str(refused.value)
    assert "namespace c enforces Pod Security 'baseline'" in str(refused.value)
    assert api.get("ConfigMap", "b", "api-weft-sidecar") is None


def test_a_replica_that_lost_the_lease_writes_nothing(
    template_cluster: ControlPlane, target: KubernetesTarget
) -> None:
    target.api.fence = lambda: False
    with pytest.raises(FencedError):
        reconcile(target, desired_template())
    assert template_cluster.admin().get("Secret", "weft-system", "weft-trust") is None
