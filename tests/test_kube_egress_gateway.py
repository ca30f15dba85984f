"""An egress Gateway on the Kubernetes target, against a real kube-apiserver: the template's
b/payments leaves through Gateway b/egress, which becomes its own workload (ServiceAccount,
ConfigMap, Deployment) behind a ClusterIP Service callers address, with a NetworkPolicy that
admits only b/api and lets the gateway out on the port TLS is originated to; b/api's egress
is held inside the cluster, so the gateway is its only way out. Applied with server-side
apply, shown by `weft diff`, pruned when the Gateway leaves the intent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from reconciler import compiler
from reconciler.identity.secretstore import workload_secret_name
from reconciler.targets.kubernetes import KubernetesTarget
from reconciler.targets.kubernetes import objects as kobjects
from tests.conftest import TEMPLATE, load, write_repo
from tests.kube import ControlPlane
from tests.kubeapps import diff_creates_then_nothing

IMAGE = "registry.example/weft:test"

# The template's ExternalService, through a gateway: plain HTTP to port 80 from b/api, TLS
# originated to 443 by the gateway.
EGRESS = {
    "b/egress.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: Gateway
        metadata: {name: egress, namespace: b}
        spec: {}
        """,
    "b/external.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: ExternalService
        metadata: {name: payments, namespace: b}
        spec:
          host: api.payments.example
          ports: [{port: 80, protocol: http, tlsOrigination: {port: 443}}]
          allowedFrom: [{services: [api]}]
          egressGateway: egress
        """,
}

OBJECTS = [
    "ServiceAccount/b/egress",
    "ConfigMap/b/egress-weft-gateway",
    "Deployment/b/egress-weft-gateway",
    "Service/b/egress-weft",
    "NetworkPolicy/b/egress-weft",
    "NetworkPolicy/b/api-weft-egress",
]


def intent_with_egress_gateway(tmp: Path) -> Path:
    root = tmp / "intent"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(TEMPLATE, root)
    return write_repo(root, EGRESS)


def reconcile(target: KubernetesTarget, desired: compiler.DesiredState) -> None:
    plan = target.plan(desired, target.observe())
    target.apply(plan)
    target.prune(plan)


def got(api: Any, ref: str) -> dict[str, Any]:
    kind, ns, name = ref.split("/")
    found = api.get(kind, ns, name)
    assert found is not None, f"{ref} was not applied"
    return dict(found)


@pytest.fixture
def target(template_cluster: ControlPlane) -> KubernetesTarget:
    return KubernetesTarget(template_cluster.admin(), image=IMAGE)


def test_an_egress_gateway_is_its_own_workload_and_is_pruned_when_removed(
    template_cluster: ControlPlane, target: KubernetesTarget, tmp_path: Path
) -> None:
    api = template_cluster.admin()
    desired = compiler.compile(load(intent_with_egress_gateway(tmp_path)))
    reconcile(target, desired)

    for ref in OBJECTS:
        assert got(api, ref)["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "weft"
    assert api.get("Service", "b", "egress-weft-gateway") is None, "no Service from outside"
    assert api.get("Secret", "b", workload_secret_name("egress")) is not None, (
        "the gateway's SPIFFE identity is issued like a service's"
    )

    deploy = got(api, "Deployment/b/egress-weft-gateway")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "egress"
    assert deploy["spec"]["template"]["metadata"]["labels"] == {"weft.dev/gateway": "egress"}
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["args"][0] == "sidecar", "the sidecars' image, in gateway mode"
    assert container["securityContext"] == kobjects.sidecar_security()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"egress-80": kobjects.INBOUND_BASE, "weft-admin": kobjects.ADMIN_PORT}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/weft/certs"]]["secret"]["secretName"] == (
        workload_secret_name("egress")
    )

    cm = got(api, "ConfigMap/b/egress-weft-gateway")
    assert json.loads(cm["data"]["proxyconfig.json"]) == (
        desired.gateway_configs[("b", "egress")].as_dict()
    )
    outbound = f"127.0.0.1:{kobjects.OUTBOUND_HTTP_PORT}"
    assert json.loads(cm["data"]["listeners.json"]) == {
        "gateway": {},
        "inbound": {"egress-80": f"0.0.0.0:{kobjects.INBOUND_BASE}"},
        "app": {"egress-80": outbound},
        "outboundHttp": outbound,
    }

    # What b/api's sidecar dials: the Service's DNS name on the ExternalService's port.
    svc = got(api, "Service/b/egress-weft")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["clusterIP"] not in ("", "None")
    assert svc["spec"]["selector"] == {"weft.dev/gateway": "egress"}
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, "egress-80")]
    assert not any(p.get("nodePort") for p in svc["spec"]["ports"])
    caller = json.loads(got(api, "ConfigMap/b/api-weft-sidecar")["data"]["proxyconfig.json"])
    (cluster,) = [c for c in caller["outbound"]["clusters"] if c["service"] == "b/egress"]
    assert cluster["endpoints"] == {"dns": "egress-weft.b.svc.cluster.local", "port": 80}
    assert caller["outbound"]["egress"] == [], "b/api's sidecar has no way out of its own"

    gw_np = got(api, "NetworkPolicy/b/egress-weft")["spec"]
    assert gw_np["podSelector"] == {"matchLabels": {"weft.dev/gateway": "egress"}}
    assert gw_np["policyTypes"] == ["Ingress", "Egress"]
    assert gw_np["ingress"] == [
        {
            "ports": [{"protocol": "TCP", "port": "egress-80"}],
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
                    "podSelector": {"matchLabels": {"app": "api"}},
                }
            ],
        }
    ]
    # Out of the cluster: to the port TLS is originated to (from any address), and DNS.
    leaving = [r for r in gw_np["egress"] if "to" not in r]
    assert {"protocol": "TCP", "port": 443} in [p for r in leaving for p in r["ports"]]
    assert {"protocol": "UDP", "port": 53} in [p for r in leaving for p in r["ports"]]
    assert {"protocol": "TCP", "port": 80} not in [p for r in leaving for p in r["ports"]]

    # b/api may reach pods of the cluster (the gateway among them) and nothing beyond.
    api_np = got(api, "NetworkPolicy/b/api-weft-egress")["spec"]
    assert api_np["podSelector"] == {"matchLabels": {"app": "api"}}
    assert api_np["policyTypes"] == ["Egress"]
    assert api_np["egress"] == [{"to": [{"namespaceSelector": {}}]}]

    reconcile(target, compiler.compile(load(TEMPLATE)))
    for ref in OBJECTS:
        kind, ns, name = ref.split("/")
        assert api.get(kind, ns, name) is None, f"{ref} was not pruned"
    assert api.get("Deployment", "b", "api-v1") is not None, "the team's workload stays"


def test_weft_diff_shows_the_egress_gateways_objects(
    template_cluster: ControlPlane, target: KubernetesTarget, tmp_path: Path
) -> None:
    root = intent_with_egress_gateway(tmp_path)

    diff_creates_then_nothing(template_cluster, target, root, IMAGE, OBJECTS)
