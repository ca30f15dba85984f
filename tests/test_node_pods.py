"""Pods on the real node of `tests/node.py`: scheduled by kube-scheduler, run by the kubelet
through containerd and runc, networked by the CNI bridge, from an image built on this machine."""

from __future__ import annotations

import urllib.request
from typing import Any

from tests.conftest import TEMPLATE
from tests.node import BASE, KUBERNETES_SERVICE_IP, NODE_NAME, WEFT, Node


def _pod(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": BASE,
                    "imagePullPolicy": "Never",
                    # Serves its own hostname, so the answer proves which container replied.
                    "command": [
                        "sh",
                        "-c",
                        "mkdir -p /srv && hostname > /srv/index.html && "
                        "exec python3 -m http.server 8080 --directory /srv",
                    ],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": 8080},
                        "periodSeconds": 1,
                    },
                }
            ],
            "terminationGracePeriodSeconds": 1,
        },
    }


def test_pod_from_local_image_is_scheduled_runs_and_becomes_ready(node: Node) -> None:
    api = node.cp.admin()
    ns = "node-pods"
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.request("POST", f"/api/v1/namespaces/{ns}/pods", body=_pod("web", ns))

    pod = node.wait_pod_ready(ns, "web")
    # The scheduler bound it to the one node; the kubelet ran it and its readiness probe passed.
    assert pod["spec"]["nodeName"] == NODE_NAME
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True
    assert "running" in status["state"]
    assert BASE in status["image"]
    # The pod has an address on this node's bridge, reachable from the machine.
    ip = pod["status"]["podIP"]
    assert ip.startswith(node.pod_address(0)[:-1])
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"http://{ip}:8080/", timeout=5) as answer:
        assert answer.read().decode().strip() == "web"


def _intent_configmap(name: str, namespace: str, break_it: bool) -> dict[str, Any]:
    files = {str(p.relative_to(TEMPLATE)): p.read_text() for p in sorted(TEMPLATE.rglob("*.yaml"))}
    if break_it:
        files["a/services.yaml"] = files["a/services.yaml"].replace("  name: web", "  nmae: web", 1)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        # ConfigMap keys cannot hold "/"; the volume's items put each file back in its folder.
        "data": {path.replace("/", "."): text for path, text in files.items()},
    }


def _validate_pod(name: str, namespace: str, configmap: dict[str, Any]) -> dict[str, Any]:
    items = [{"key": k, "path": k.replace(".", "/", k.count(".") - 1)} for k in configmap["data"]]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "weft",
                    "image": WEFT,
                    "imagePullPolicy": "Never",
                    # A ConfigMap volume is a farm of symbolic links, which Weft refuses to
                    # read as intent (it never follows links): copy the files out first.
                    "command": [
                        "sh",
                        "-c",
                        "cp -RL /configmap /tmp/intent && weft validate /tmp/intent"
                        " && id -u > /dev/termination-log",
                    ],
                    # The last lines of output land in the pod's status, readable from the API.
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [{"name": "intent", "mountPath": "/configmap"}],
                }
            ],
            "volumes": [
                {
                    "name": "intent",
                    "configMap": {"name": configmap["metadata"]["name"], "items": items},
                }
            ],
        },
    }


def test_weft_image_built_from_the_dockerfile_runs_as_a_pod(node: Node) -> None:
    """The image deploy/Dockerfile makes (tools/node/weft-image.sh) runs `weft validate` as its
    non-root user: the template's intent passes, a broken copy fails naming file and line."""
    api = node.cp.admin()
    ns = "node-image"
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for name, break_it in (("good", False), ("broken", True)):
        cm = _intent_configmap(f"intent-{name}", ns, break_it)
        api.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm)
        api.request("POST", f"/api/v1/namespaces/{ns}/pods", body=_validate_pod(name, ns, cm))

    good = node.wait_pod_phase(ns, "good", {"Succeeded", "Failed"})
    broken = node.wait_pod_phase(ns, "broken", {"Succeeded", "Failed"})
    assert good["status"]["phase"] == "Succeeded", node.diagnose(ns)
    # It ran as the image's USER (the pod sets none), which the good pod wrote after validating.
    assert good["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "65532\n"
    assert broken["status"]["phase"] == "Failed", node.diagnose(ns)
    terminated = broken["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert "a/services.yaml:5:3: error: unknown field 'metadata.nmae'" in terminated["message"]


def test_pods_resolve_services_through_the_cluster_dns(node: Node) -> None:
    """The kubelet gives pods CoreDNS (on the node's address) and the cluster's search path:
    a Service's short name and its full name both resolve to its ClusterIP."""
    api = node.cp.admin()
    ns = "node-dns"
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    script = (
        "import socket\n"
        "names = ['kubernetes.default', 'kubernetes.default.svc.cluster.local']\n"
        "found = [socket.gethostbyname(n) for n in names]\n"
        "open('/dev/termination-log', 'w').write(' '.join(found))\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lookup", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "lookup",
                    "image": BASE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", script],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }
    api.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)
    done = node.wait_pod_phase(ns, "lookup", {"Succeeded", "Failed"})
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", terminated.get("message")
    assert terminated["message"] == f"{KUBERNETES_SERVICE_IP} {KUBERNETES_SERVICE_IP}"
