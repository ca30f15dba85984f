"""What `weft up` makes of an egress gateway (no processes started): the caller's cluster for
the external host is bound to the gateway's mesh-facing port, and the gateway's listeners hand
that port to its own outbound side, where the ExternalService is its egress destination."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler import compiler
from reconciler.targets.local.target import LocalTarget
from tests.conftest import load, write_repo
from tests.kube import ControlPlane
from tests.test_egress_gateway import INTENT


def test_weft_up_binds_callers_to_the_egress_gateway_and_the_gateway_to_its_outbound(
    tmp_path: Path,
) -> None:
    desired = compiler.compile(load(write_repo(tmp_path / "repo", INTENT)))
    target = LocalTarget(tmp_path / "state")
    try:
        units = target._units(desired)
    finally:
        target.close()
    gateway = units["sidecar/a/egress/gateway"].payload["listeners"]
    assert set(gateway["inbound"]) == {"egress-80"}
    assert gateway["app"] == {"egress-80": gateway["outboundHttp"]}
    gateway_config = json.loads(units["config/a/egress/gateway"].payload)
    (dest,) = gateway_config["outbound"]["egress"]
    assert (dest["host"], dest["port"], dest["tlsOrigination"]["port"]) == (
        "api.partner.test",
        80,
        443,
    )
    (rule,) = gateway_config["inbound"][0]["rules"]
    assert rule["peers"]["identities"] == ["spiffe://egress.local/ns/a/sa/web"]

    web = json.loads(units["config/a/web/default"].payload)["outbound"]
    assert web["egress"] == []
    (cluster,) = [c for c in web["clusters"] if c["service"] == "a/egress"]
    assert cluster["endpoints"]["static"] == [gateway["inbound"]["egress-80"]]
    api = json.loads(units["config/b/api/default"].payload)["outbound"]
    assert not [c for c in api["clusters"] if c["service"] == "a/egress"], "b/api is not admitted"


def test_only_the_gateway_may_leave_the_cluster(
    tmp_path: Path, kube: ControlPlane, namespace: str
) -> None:
    """On Kubernetes: a/web, whose one ExternalService leaves through the gateway, gets an
    egress NetworkPolicy that admits only pods of the cluster; b/api (no ExternalService) gets
    none; the gateway's own lets it beyond the cluster on the port TLS is originated to, so the
    gateway alone may leave. The real API server takes it."""
    desired = compiler.compile(load(write_repo(tmp_path / "repo", INTENT)))
    egress = [p for p in desired.network_policies if "Egress" in p["spec"]["policyTypes"]]
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in egress] == [
        ("a", "web-weft-egress"),
        ("a", "egress-weft"),
    ]
    policy, gateway = egress
    assert policy["spec"]["egress"] == [{"to": [{"namespaceSelector": {}}]}]
    beyond = [p for r in gateway["spec"]["egress"] if "to" not in r for p in r["ports"]]
    assert {"protocol": "TCP", "port": 443} in beyond
    policy = {**policy, "metadata": {**policy["metadata"], "namespace": namespace}}
    kube.admin().create(policy)
    live = kube.admin().get("NetworkPolicy", namespace, "web-weft-egress")
    assert live is not None
    assert live["spec"]["policyTypes"] == ["Egress"]
    assert live["spec"]["egress"] == [{"to": [{"namespaceSelector": {}}]}]
    assert live["spec"]["podSelector"] == policy["spec"]["podSelector"]


def test_an_external_service_with_addresses_is_reached_only_at_them(
    tmp_path: Path, kube: ControlPlane, namespace: str
) -> None:
    """With `addresses`, the gateway dials them instead of resolving the host (its egress
    destination lists them), and its NetworkPolicy lets it beyond the cluster on the TLS port
    only to those addresses, not to any. The real API server takes the policy as written."""
    pinned = INTENT["egress.yaml"].replace(
        "  egressGateway: egress",
        "  egressGateway: egress\n          addresses: [192.0.2.7, 2001:db8::7]",
    )
    repo = write_repo(tmp_path / "repo", {**INTENT, "egress.yaml": pinned})
    desired = compiler.compile(load(repo))
    (dest,) = desired.gateway_configs[("a", "egress")].as_dict()["outbound"]["egress"]
    assert dest["addresses"] == ["192.0.2.7", "2001:db8::7"]
    (gateway,) = [p for p in desired.network_policies if p["metadata"]["name"] == "egress-weft"]
    beyond = [r for r in gateway["spec"]["egress"] if "namespaceSelector" not in str(r)]
    assert beyond == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {
            "to": [{"ipBlock": {"cidr": "192.0.2.7/32"}}, {"ipBlock": {"cidr": "2001:db8::7/128"}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        },
    ]
    gateway = {**gateway, "metadata": {**gateway["metadata"], "namespace": namespace}}
    kube.admin().create(gateway)
    live = kube.admin().get("NetworkPolicy", namespace, "egress-weft")
    assert live is not None
    assert live["spec"]["egress"][-1] == beyond[-1]
