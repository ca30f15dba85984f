"""The egress gateway the Kubernetes target wrote, run as a pod in front of a b/api pod, both
from what the real API server holds (tests/test_kube_gateway_pod.py, test_kube_pods_netns.py):
b/api's app calls the ExternalService by its host name, its capture and sidecar send the call
over mesh mTLS to the gateway's Service name and port (kube-proxy's mapping to the named pod
port is one REDIRECT in the gateway's namespace), and the gateway, having checked the caller
against allowedFrom, calls the outside: an HTTP server on 127.0.0.1 in the gateway's own
network namespace, where the host name resolves for it alone.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import compiler
from reconciler.targets.kubernetes import KubernetesTarget
from reconciler.targets.kubernetes import objects as kobjects
from reconciler.targets.local import netns
from tests.conftest import TEMPLATE, load, write_repo
from tests.kube import ControlPlane, wait_for
from tests.test_kube_gateway_pod import start_gateway
from tests.test_kube_pods_netns import CLEAN_ENV, Pod, _ready, curl, pytestmark, start_pod

__all__ = ["pytestmark"]

HOST = "api.payments.example"
PORT = 8080  # plain HTTP all the way: the outside server is the test's, on loopback
EGRESS = {
    "b/egress.yaml": """\
        apiVersion: weft.dev/v1alpha1
        kind: Gateway
        metadata: {name: egress, namespace: b}
        spec: {}
        """,
    "b/external.yaml": f"""\
        apiVersion: weft.dev/v1alpha1
        kind: ExternalService
        metadata: {{name: payments, namespace: b}}
        spec:
          host: {HOST}
          ports: [{{port: {PORT}, protocol: http}}]
          allowedFrom: [{{services: [api]}}]
          egressGateway: egress
        """,
}

OUTSIDE = """\
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "host": self.headers["host"]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def pods(template_cluster: ControlPlane, tmp_path: Path) -> Iterator[tuple[Pod, Pod]]:
    api = template_cluster.admin()
    root = tmp_path / "intent"
    shutil.copytree(TEMPLATE, root)
    write_repo(root, EGRESS)
    target = KubernetesTarget(api, image="registry.example/weft:test")
    plan = target.plan(compiler.compile(load(root)), target.observe())
    target.apply(plan)
    target.prune(plan)
    service = api.get("Service", "b", "egress-weft")
    assert service is not None
    (port,) = service["spec"]["ports"]
    deploy = api.get("Deployment", "b", "egress-weft-gateway")
    assert deploy is not None
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    pod_port = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]

    tag = secrets.token_hex(3)
    net = netns.Network(tag, netns.free_subnet(tag))
    net.create()
    folder = Path(tempfile.mkdtemp(prefix="weft-egresspod-"))
    folder.chmod(0o755)
    running: list[Pod] = []
    try:
        # b/api resolves the gateway's Service to the gateway pod (its ClusterIP, as far as
        # this test goes) and the outside host to an address its capture takes before routing.
        caller = Pod(
            net.add(1, {"egress-weft.b.svc.cluster.local": net.address(2), HOST: "192.0.2.80"}),
            folder / "api-v1",
        )
        caller.folder.mkdir()
        running.append(caller)
        start_pod(api, caller, "b", "api-v1", service="api", instance="v1")
        gw = Pod(net.add(2, {HOST: "127.0.0.1"}), folder / "gateway")
        gw.folder.mkdir()
        running.append(gw)
        # kube-proxy's part: the Service port onto the pod port its targetPort names.
        subprocess.run(
            [*gw.host.exec_prefix(), "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp",
             "--dport", str(port["port"]), "-j", "REDIRECT", "--to-ports", str(pod_port)],
            check=True,
        )  # fmt: skip
        gw.run("outside", [*gw.host.exec_prefix(), sys.executable, "-c", OUTSIDE, str(PORT)],
               CLEAN_ENV)  # fmt: skip
        start_gateway(api, gw, "egress")
        for pod in running:
            wait_for(lambda a=f"{pod.host.address}:{kobjects.ADMIN_PORT}": _ready(a), timeout=30)
        yield caller, gw
    except BaseException:
        print("\n".join(p.logs() for p in running))
        raise
    finally:
        for pod in running:
            pod.stop()
        net.remove()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_meshed_call_leaves_through_the_egress_gateway_pod(pods: tuple[Pod, Pod]) -> None:
    caller, gw = pods
    status, body = curl(caller, f"http://{HOST}:{PORT}/charge?x=1")
    assert status == 200, body + caller.logs() + gw.logs()
    assert json.loads(body) == {"path": "/charge?x=1", "host": f"{HOST}:{PORT}"}
    # The outside server is on the gateway's loopback: the caller could not have reached it.
    status, _ = curl(caller, f"http://{HOST}:{PORT + 1}/")
    assert status != 200, "a port the ExternalService does not declare is not let out"
