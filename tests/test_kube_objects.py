"""The Kubernetes target's pure parts: what it would apply, and when a live object holds it."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler import capture, compiler
from reconciler.targets.kubernetes import compare, gateways, objects
from tests.conftest import load, write_repo
from tests.kubeapps import desired_template
from tests.test_egress_gateway import INTENT as EGRESS_INTENT


def test_subset_holds_despite_server_defaults_and_other_managers() -> None:
    desired = {"spec": {"template": {"spec": {"initContainers": [{"name": "s", "image": "i"}]}}}}
    live = {
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "initContainers": [
                        {"name": "other", "image": "x"},
                        {"name": "s", "image": "i", "imagePullPolicy": "IfNotPresent"},
                    ],
                    "containers": [{"name": "app"}],
                }
            },
        }
    }
    assert compare.differences(desired, live) == []


def test_differences_name_the_path() -> None:
    desired = {"data": {"a": "1", "b": "2"}, "spec": {"ports": [{"port": 80, "name": "http"}]}}
    live = {"data": {"a": "1", "b": "3"}, "spec": {"ports": [{"port": 80, "name": "web"}]}}
    assert compare.differences(desired, live) == [".data.b", ".spec.ports[http]"]


def test_scalars_of_another_type_differ() -> None:
    assert compare.differences({"x": 1}, {"x": "1"}) == [".x"]
    assert compare.differences({"x": True}, {"x": 1}) == [".x"]
    assert compare.differences({"x": []}, {}) == []


def test_injection_touches_only_weft_fields() -> None:
    desired = desired_template()
    config = desired.proxy_configs[("b", "api")]
    body = objects.injection("Deployment", "b", "api-v1", service="api", config=config, image="i")
    pod = body["spec"]["template"]["spec"]
    assert set(body["spec"]) == {"template"}
    assert set(body["spec"]["template"]) == {"spec"}
    assert set(pod) == {"initContainers", "volumes"}
    assert [c["name"] for c in pod["initContainers"]] == ["weft-capture", "weft-sidecar"]
    # The init container runs the one capture script, with the pod port → listener mapping.
    args = pod["initContainers"][0]["args"]
    assert args[0] == "apply"
    assert args[args.index("--proxy-uid") + 1] == str(capture.PROXY_UID)
    assert args[args.index("--inbound") + 1] == f"8081:{objects.INBOUND_BASE}"


def test_listeners_map_cluster_ips_of_tcp_upstreams() -> None:
    desired = desired_template()
    config = desired.proxy_configs[("b", "api")]
    tcp = list(config.as_dict()["outbound"]["tcp"])
    assert tcp, "b/api calls b/cache over TCP in the template"
    ns, name = tcp[0]["service"].split("/")
    found = objects.listeners(config, {(ns, name): "10.96.0.42"})
    assert found["originalDestinations"] == {
        f"10.96.0.42:{tcp[0]['port']}": f"{tcp[0]['service']}:{tcp[0]['port']}"
    }
    assert found["inbound"] == {"http": f"0.0.0.0:{objects.INBOUND_BASE}"}
    assert found["app"] == {"http": "127.0.0.1:8081"}
    cm = objects.sidecar_configmap("b", "api", config)
    assert json.loads(cm["data"]["proxyconfig.json"]) == config.as_dict()


def test_inbound_listener_ports_are_sticky() -> None:
    config = desired_template().proxy_configs[("b", "api")]
    assert objects.inbound_ports(config) == {"http": objects.INBOUND_BASE}
    # The port had another listener when the pods started: it keeps it.
    assert objects.inbound_ports(config, {"http": 15104, "gone": 15100}) == {"http": 15104}
    cm = objects.sidecar_configmap("b", "api", config, inbound={"http": 15104})
    assert objects.live_inbound_ports(cm) == {"http": 15104}
    assert objects.live_inbound_ports(None) == {}
    args = objects.capture_args(config, {"http": 15104}, ["10.96.0.1/32"])
    assert args[args.index("--inbound") + 1] == "8081:15104"
    assert args[args.index("--exclude-ports") + 1] == "53"
    assert args[args.index("--exclude-cidrs") + 1] == "10.96.0.1/32"


def test_the_applied_digest_changes_with_what_is_applied() -> None:
    body = {"kind": "Service", "metadata": {"name": "x", "annotations": {"a": "b"}}, "spec": {}}
    first = objects.stamped(body)
    assert first["metadata"]["annotations"]["a"] == "b"
    again = objects.stamped(json.loads(json.dumps(body)))
    assert again == first
    changed = objects.stamped({**body, "spec": {"selector": {"app": "x"}}})
    digest = objects.APPLIED
    assert changed["metadata"]["annotations"][digest] != first["metadata"]["annotations"][digest]


def test_ports_of_two_protocols_on_one_number_are_two_items() -> None:
    dns = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert compare.differences({"ports": dns}, {"ports": list(reversed(dns))}) == []
    assert compare.differences({"ports": dns}, {"ports": dns[:1]}) == [".ports[53/TCP]"]


def test_an_egress_gateway_is_a_workload_whose_port_names_the_compilers_objects_use(
    tmp_path: Path,
) -> None:
    desired = compiler.compile(load(write_repo(tmp_path / "repo", EGRESS_INTENT)))
    config = desired.gateway_configs[("a", "egress")]
    built = gateways.objects(config, desired.gateway_runs[("a", "egress")], "i")
    assert [(o["kind"], o["metadata"]["name"]) for o in built] == [
        ("ServiceAccount", "egress"),
        ("ConfigMap", "egress-weft-gateway"),
        ("Deployment", "egress-weft-gateway"),
    ], "no Service or NetworkPolicy of its own: nothing outside reaches it"
    deploy = built[-1]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"] == objects.sidecar_security()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["egress-80"] == objects.INBOUND_BASE
    listeners = json.loads(built[1]["data"]["listeners.json"])
    assert listeners["inbound"] == {"egress-80": f"0.0.0.0:{objects.INBOUND_BASE}"}
    assert listeners["app"] == {"egress-80": listeners["outboundHttp"]}

    # The compiler's ClusterIP Service and NetworkPolicy select these pods and name these ports.
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    (svc,) = [s for s in desired.discovery_services if s["metadata"]["name"] == "egress-weft"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == pod_labels
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= named.keys()
    (policy,) = [p for p in desired.network_policies if p["metadata"]["name"] == "egress-weft"]
    assert policy["spec"]["podSelector"] == {"matchLabels": pod_labels}
    assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} == {"egress-80"}
    assert all(r["from"] for r in policy["spec"]["ingress"]), "an empty from admits everyone"
    outside = [p for r in policy["spec"]["egress"] if "to" not in r for p in r["ports"]]
    assert {"protocol": "TCP", "port": 443} in outside
    assert {"protocol": "TCP", "port": 80} not in outside, "TLS is originated: 443 only"
