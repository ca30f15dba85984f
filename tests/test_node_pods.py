"""Pods on the real node of `tests/node.py`: scheduled by kube-scheduler, run by the kubelet
through containerd and runc, networked by the CNI bridge, from an image built on this machine."""

from __future__ import annotations

import urllib.request
from typing import Any

from tests.node import BASE, NODE_NAME, Node


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
