"""The gateway the Kubernetes target wrote, run as a pod: its Deployment, ConfigMap, identity
Secret and certificate Secret read back from the real API server and run as the kubelet would
(the container's arguments as UID 1337 in a network namespace, the volumes where they are
mounted), in front of a b/api pod run the same way (tests/test_kube_pods_netns.py). curl on
the host is the outside: HTTPS to the gateway's pod port with the certificate from the
Secret, over mTLS onward as the gateway's identity; plain HTTP answered with the redirect.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import capture, compiler
from reconciler.compiler import proxyconfig as pc
from reconciler.targets.kubernetes import KubernetesTarget
from reconciler.targets.kubernetes import objects as kobjects
from reconciler.targets.kubernetes.api import Api
from reconciler.targets.kubernetes.gateways import name_of
from reconciler.targets.local import netns
from tests.conftest import TEMPLATE, load, write_repo
from tests.kube import ControlPlane, wait_for
from tests.pki import CA
from tests.test_kube_pods_netns import CLEAN_ENV, Pod, _ready, mount, pytestmark, start_pod

__all__ = ["pytestmark"]

GATEWAY = """\
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {name: public, namespace: b}
spec:
  listeners:
    - {name: http, port: 80, protocol: HTTP, hosts: [shop.example.com], httpsRedirect: true}
    - {name: https, port: 443, hosts: [shop.example.com], tls: {secret: shop-tls}}
---
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: storefront, namespace: b}
spec:
  host: api
  gateways: [public]
  hostnames: [shop.example.com]
  rules: [{backends: [{subset: v1}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-outside, namespace: b}
spec: {to: {services: [api]}, from: [{gateways: [public]}]}
"""


def start_gateway(api: Api, pod: Pod, gateway: str = "public") -> None:
    """Gateway b/<gateway>'s Deployment's container, its volumes mounted as the kubelet would."""
    deploy = api.get("Deployment", "b", name_of(gateway))
    assert deploy is not None
    spec = deploy["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    folders: dict[str, Path] = {}
    for name, where in mounts.items():
        volume = volumes[name]
        if "configMap" in volume:
            cm = api.get("ConfigMap", "b", volume["configMap"]["name"])
            assert cm is not None
            files = {k: v.encode() for k, v in cm["data"].items()}
        else:
            secret = api.get("Secret", "b", volume["secret"]["secretName"])
            assert secret is not None, volume
            files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        folders[where] = mount(pod.folder / name, files)
    # The ProxyConfig names the Secret's files where they are mounted: point it at this
    # pod's folder for them, as the mount would.
    config_dir = folders[kobjects.CONFIG_DIR]
    config = (config_dir / "proxyconfig.json").read_text()
    for where, folder in folders.items():
        if where.startswith(pc.GATEWAY_SECRETS_DIR):
            config = config.replace(where, str(folder))
    (config_dir / "proxyconfig.json").chmod(0o644)
    (config_dir / "proxyconfig.json").write_text(config)
    listeners = json.loads((config_dir / "listeners.json").read_text())
    listeners["gateway"] = {
        n: a.replace("0.0.0.0", pod.host.address) for n, a in listeners["gateway"].items()
    }
    (config_dir / "listeners.json").chmod(0o644)
    (config_dir / "listeners.json").write_text(json.dumps(listeners))
    assert container["securityContext"]["runAsUser"] == capture.PROXY_UID
    args = container["args"]
    for where, folder in folders.items():
        args = [a.replace(where, str(folder)) for a in args]
    assert args[0] == "sidecar"
    pod.run(
        "gateway",
        [*pod.host.exec_prefix(uid=capture.PROXY_UID), sys.executable, "-m",
         "reconciler.sidecar", *args[1:]],
        {**CLEAN_ENV, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip


@pytest.fixture
def edge(template_cluster: ControlPlane, tmp_path: Path) -> Iterator[tuple[Pod, Path]]:
    api = template_cluster.admin()
    site_ca = CA.create("public web CA")
    site = site_ca.issue_server("shop.example.com")
    api.create({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "shop-tls", "namespace": "b"},
        "data": {"tls.crt": base64.b64encode(site.chain).decode(),
                 "tls.key": base64.b64encode(site.key).decode()},
    })  # fmt: skip
    trust = tmp_path / "site-ca.pem"
    trust.write_bytes(site_ca.pem)
    root = tmp_path / "intent"
    shutil.copytree(TEMPLATE, root)
    write_repo(root, {"b/gateway.yaml": GATEWAY})
    target = KubernetesTarget(api, image="registry.example/weft:test")
    plan = target.plan(compiler.compile(load(root)), target.observe())
    target.apply(plan)
    target.prune(plan)

    tag = secrets.token_hex(3)
    net = netns.Network(tag, netns.free_subnet(tag))
    net.create()
    names = {"api-v1-weft.b.svc.cluster.local": net.address(1)}
    folder = Path(tempfile.mkdtemp(prefix="weft-gwpod-"))
    folder.chmod(0o755)
    running: list[Pod] = []
    try:
        api_pod = Pod(net.add(1, {**names, "api-v1.b": net.address(1)}), folder / "api-v1")
        api_pod.folder.mkdir()
        running.append(api_pod)
        start_pod(api, api_pod, "b", "api-v1", service="api", instance="v1")
        gw = Pod(net.add(2, {**names, "gateway.public.b": net.address(2)}), folder / "gateway")
        gw.folder.mkdir()
        running.append(gw)
        start_gateway(api, gw)
        for pod in running:
            wait_for(lambda a=f"{pod.host.address}:{kobjects.ADMIN_PORT}": _ready(a), timeout=30)
        yield gw, trust
    except BaseException:
        print("\n".join(p.logs() for p in running))
        raise
    finally:
        for pod in running:
            pod.stop()
        net.remove()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_gateway_pod_serves_the_secrets_certificate_and_routes_into_the_mesh(
    edge: tuple[Pod, Path],
) -> None:
    gw, trust = edge
    address = gw.host.address

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "-m", "10", "--noproxy", "*", "--cacert", str(trust),
             "--resolve", f"shop.example.com:15301:{address}",
             "--resolve", f"shop.example.com:15300:{address}",
             "-o", "-", "-w", "\n%{http_code} %{http_version} %{redirect_url}", *args],
            capture_output=True, text=True, env=CLEAN_ENV, check=False,
        )  # fmt: skip

    for version, expected in (("--http2", "2"), ("--http1.1", "1.1")):
        done = curl(version, "https://shop.example.com:15301/hello")
        assert done.returncode == 0, done.stderr + gw.logs()
        body, _, last = done.stdout.rpartition("\n")
        assert last.split()[:2] == ["200", expected], done.stdout
        answer = json.loads(body)
        # b/api's sidecar verified the gateway's certificate and told the app who called.
        assert answer["caller"] == "spiffe://weft.local/ns/b/sa/public", answer
        assert answer["instance"] == "v1"
    done = curl("http://shop.example.com:15300/cart?x=1")
    assert done.stdout.rpartition("\n")[2] == "301 1.1 https://shop.example.com/cart?x=1"
