"""An ingress Gateway on the Kubernetes target, against a real kube-apiserver: its
ServiceAccount, ConfigMap, Deployment, Service (LoadBalancer, or NodePort when the intent says
so) and NetworkPolicy applied with server-side apply, its certificate a Kubernetes Secret the
Deployment mounts, shown by `weft diff`, pruned when the Gateway leaves the intent; a missing
or broken Secret fails the plan, naming the Gateway and the Secret, with nothing applied.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from reconciler import compiler, localrepo, loop
from reconciler.compiler import proxyconfig as pc
from reconciler.identity.secretstore import workload_secret_name
from reconciler.targets.kubernetes import ConflictError, KubernetesTarget
from tests.conftest import TEMPLATE, load, write_repo
from tests.kube import ControlPlane
from tests.kubeapps import diff_creates_then_nothing
from tests.pki import CA

IMAGE = "registry.example/weft:test"

GATEWAY = """\
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {name: public, namespace: a}
spec:
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      hosts: [shop.example.com]
      httpsRedirect: true
    - name: https
      port: 443
      hosts: [shop.example.com]
      tls: {secret: shop-tls}
  kubernetes: {serviceType: SERVICE_TYPE}
---
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: storefront, namespace: a}
spec:
  host: web
  gateways: [public]
  hostnames: [shop.example.com]
  rules: [{backends: [{}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-outside, namespace: a}
spec:
  to: {services: [web]}
  from: [{gateways: [public]}]
"""

OBJECTS = [
    "ServiceAccount/a/public",
    "ConfigMap/a/public-weft-gateway",
    "Deployment/a/public-weft-gateway",
    "Service/a/public-weft-gateway",
    "NetworkPolicy/a/public-weft-gateway",
]


def intent_with_gateway(tmp: Path, service_type: str = "LoadBalancer") -> Path:
    root = tmp / "intent"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(TEMPLATE, root)
    write_repo(root, {"a/gateway.yaml": GATEWAY.replace("SERVICE_TYPE", service_type)})
    return root


def tls_secret(cert: bytes, key: bytes) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "shop-tls", "namespace": "a"},
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


def reconcile(target: KubernetesTarget, desired: compiler.DesiredState) -> None:
    plan = target.plan(desired, target.observe())
    target.apply(plan)
    target.prune(plan)


@pytest.fixture
def target(template_cluster: ControlPlane) -> KubernetesTarget:
    return KubernetesTarget(template_cluster.admin(), image=IMAGE)


@pytest.fixture
def site() -> tuple[bytes, bytes]:
    ident = CA.create("public web CA").issue_server("shop.example.com")
    return ident.chain, ident.key


def test_a_gateway_is_applied_with_its_secret_mounted_and_pruned_when_removed(
    template_cluster: ControlPlane,
    target: KubernetesTarget,
    site: tuple[bytes, bytes],
    tmp_path: Path,
) -> None:
    api = template_cluster.admin()
    api.create(tls_secret(*site))
    reconcile(target, compiler.compile(load(intent_with_gateway(tmp_path))))

    for ref in OBJECTS:
        kind, ns, name = ref.split("/")
        found = api.get(kind, ns, name)
        assert found is not None, f"{ref} was not applied"
        assert found["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "weft"
    deploy = api.get("Deployment", "a", "public-weft-gateway")
    assert deploy is not None
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "public"
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["args"][0] == "sidecar", "the sidecars' image, in gateway mode"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    edge = volumes[mounts[f"{pc.GATEWAY_SECRETS_DIR}/shop-tls"]]
    assert edge["secret"]["secretName"] == "shop-tls"
    identity = volumes[mounts["/etc/weft/certs"]]
    assert identity["secret"]["secretName"] == workload_secret_name("public")
    assert api.get("Secret", "a", workload_secret_name("public")) is not None, (
        "the gateway's SPIFFE identity is issued like a service's, beside it"
    )

    cm = api.get("ConfigMap", "a", "public-weft-gateway")
    assert cm is not None
    config = json.loads(cm["data"]["proxyconfig.json"])
    https = config["gateway"][1]
    assert https["certificates"] == [
        {
            "certificateFile": f"{pc.GATEWAY_SECRETS_DIR}/shop-tls/tls.crt",
            "keyFile": f"{pc.GATEWAY_SECRETS_DIR}/shop-tls/tls.key",
            "secret": "a/shop-tls",
        }
    ]
    assert "BEGIN" not in cm["data"]["proxyconfig.json"], "the key stays in its Secret"
    listeners = json.loads(cm["data"]["listeners.json"])
    assert listeners == {"gateway": {"http": "0.0.0.0:15300", "https": "0.0.0.0:15301"}}

    svc = api.get("Service", "a", "public-weft-gateway")
    assert svc is not None
    assert svc["spec"]["type"] == "LoadBalancer"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        (80, 15300),
        (443, 15301),
    ]
    assert svc["spec"]["selector"] == {"weft.dev/gateway": "public"}
    gw_np = api.get("NetworkPolicy", "a", "public-weft-gateway")
    assert gw_np is not None
    assert gw_np["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 15300}, {"protocol": "TCP", "port": 15301}]}
    ]
    # a/web's own NetworkPolicy lets the gateway's pods in, as its AccessPolicy does.
    web_np = api.get("NetworkPolicy", "a", "web-weft")
    assert web_np is not None
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "a"}},
        "podSelector": {"matchLabels": {"weft.dev/gateway": "public"}},
    } in [peer for rule in web_np["spec"]["ingress"] for peer in rule.get("from", [])]

    # NodePort, when the intent selects it: the API server assigns the node ports.
    reconcile(target, compiler.compile(load(intent_with_gateway(tmp_path, "NodePort"))))
    svc = api.get("Service", "a", "public-weft-gateway")
    assert svc is not None
    assert svc["spec"]["type"] == "NodePort"
    assert all(p.get("nodePort") for p in svc["spec"]["ports"])

    reconcile(target, compiler.compile(load(TEMPLATE)))
    for ref in OBJECTS:
        kind, ns, name = ref.split("/")
        assert api.get(kind, ns, name) is None, f"{ref} was not pruned"
    assert api.get("Secret", "a", "shop-tls") is not None, "the user's Secret is not Weft's"


def test_a_missing_or_broken_secret_fails_the_plan_naming_gateway_and_secret(
    template_cluster: ControlPlane,
    target: KubernetesTarget,
    site: tuple[bytes, bytes],
    tmp_path: Path,
) -> None:
    api = template_cluster.admin()
    desired = compiler.compile(load(intent_with_gateway(tmp_path)))
    with pytest.raises(ConflictError, match="Gateway a/public: Secret a/shop-tls does not exist"):
        reconcile(target, desired)
    assert api.get("Deployment", "a", "public-weft-gateway") is None
    assert api.get("ConfigMap", "a", "web-weft-sidecar") is None, "nothing of it applied"

    other_key = CA.create("x").issue_server("shop.example.com").key
    api.create(tls_secret(site[0], other_key))
    target = KubernetesTarget(api, image=IMAGE)
    with pytest.raises(
        ConflictError,
        match=r"Gateway a/public: Secret a/shop-tls is not a usable certificate: "
        r"tls\.key: key does not match the certificate",
    ) as refused:
        reconcile(target, desired)
    assert "PRIVATE KEY" not in str(refused.value)
    assert api.get("Deployment", "a", "public-weft-gateway") is None


def test_weft_diff_shows_the_gateways_objects(
    template_cluster: ControlPlane,
    target: KubernetesTarget,
    site: tuple[bytes, bytes],
    tmp_path: Path,
) -> None:
    template_cluster.admin().create(tls_secret(*site))
    root = intent_with_gateway(tmp_path)

    diff_creates_then_nothing(template_cluster, target, root, IMAGE, OBJECTS)


def test_the_status_names_the_gateway_and_secret_until_the_secret_is_right(
    template_cluster: ControlPlane,
    target: KubernetesTarget,
    site: tuple[bytes, bytes],
    tmp_path: Path,
) -> None:
    """Through the loop, as `weft run` reconciles: the status (and its ConfigMap) says which
    Gateway lacks which Secret; once the Secret exists the revision applies; a Secret broken
    afterwards fails the next reconcile and leaves the running gateway as it was."""
    import pygit2  # noqa: PLC0415

    api = template_cluster.admin()
    repo = tmp_path / "repo"
    localrepo.init_from_template(TEMPLATE, repo)
    write_repo(repo, {"a/gateway.yaml": GATEWAY.replace("SERVICE_TYPE", "LoadBalancer")})
    git = pygit2.Repository(str(repo))
    git.index.add_all()
    git.index.write()
    sig = pygit2.Signature("test", "test@localhost")
    git.create_commit("HEAD", sig, sig, "a gateway", git.index.write_tree(), [git.head.target])
    source = localrepo.LocalRepoSource(repo)
    rec = loop.Reconciler(source, target, tmp_path / "status.json")
    revision = source.fetch()
    assert revision is not None

    assert not rec.reconcile(revision)
    stalled = rec.status.conditions["Stalled"]
    assert stalled.status
    assert "Gateway a/public: Secret a/shop-tls does not exist" in stalled.message
    published = api.get("ConfigMap", "weft-system", "weft-status")
    assert published is not None
    assert "Gateway a/public: Secret a/shop-tls does not exist" in published["data"]["status.json"]
    assert api.get("Deployment", "a", "public-weft-gateway") is None

    api.create(tls_secret(*site))
    assert rec.reconcile(revision)
    deployed = api.get("Deployment", "a", "public-weft-gateway")
    assert deployed is not None

    broken = tls_secret(
        b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n", site[1]
    )
    api.replace(broken)
    assert not rec.reconcile(revision)
    assert "Secret a/shop-tls is not a usable certificate: tls.crt" in (
        rec.status.conditions["Stalled"].message
    )
    kept = api.get("Deployment", "a", "public-weft-gateway")
    assert kept is not None
    assert kept["metadata"]["resourceVersion"] == deployed["metadata"]["resourceVersion"]
