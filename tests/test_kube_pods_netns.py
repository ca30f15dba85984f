"""What the Kubernetes target wrote, run as pods: the capture init container and the native
sidecar of each workload, exactly as the API server holds them, in network namespaces.

No kubelet runs here, so this test plays its part for three pods (a/web, b/api-v1, b/api-v2):
it reads each Deployment's pod template, the sidecar ConfigMap and the identity Secret back from
the real API server, writes the ConfigMap and Secret where the volumes would be mounted, runs the
`weft-capture` init container's command as root in the pod's namespace, then the `weft-sidecar`
container's arguments as UID 1337, and the demo app beside it. An unmodified curl in the web pod
then calls `http://api.b.svc.cluster.local:8080/` — the ClusterIP of the app team's Service — and
the request is captured, carried over mTLS to an api pod (found through the discovery Service's
name), authorized by a/web's SPIFFE ID, and delivered.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import capture
from reconciler.targets.kubernetes import KubernetesTarget
from reconciler.targets.kubernetes import objects as kobjects
from reconciler.targets.local import netns
from tests.kube import ControlPlane, wait_for
from tests.kubeapps import desired_template

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(shutil.which(t) for t in ("ip", "iptables", "setpriv", "curl")),
        reason="needs root, iproute2, iptables, setpriv and curl",
    ),
]

CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
PODS = [("a", "web", "web", "default"), ("b", "api-v1", "api", "v1"), ("b", "api-v2", "api", "v2")]


class Pod:
    """One pod of a workload: its namespace, mounted volumes, and processes."""

    def __init__(self, host: netns.Host, folder: Path) -> None:
        self.host, self.folder = host, folder
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def run(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with (self.folder / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.procs.append((name, proc))

    def logs(self) -> str:
        return "\n".join(
            f"--- {self.host.netns} {name}\n{(self.folder / f'{name}.log').read_text()}"
            for name, _ in self.procs
        )

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def mount(folder: Path, files: dict[str, bytes]) -> Path:
    """A volume as the kubelet mounts it: files readable by the pod's users (defaultMode 0444)."""
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o444)
    return folder


def start_pod(api: Any, pod: Pod, ns: str, workload: str, *, service: str, instance: str) -> None:
    template = api.get("Deployment", ns, workload)["spec"]["template"]["spec"]
    init = {c["name"]: c for c in template["initContainers"]}
    cm = api.get("ConfigMap", ns, kobjects.sidecar_configmap_name(service))
    secret_name = next(v for v in template["volumes"] if v["name"] == "weft-certs")["secret"]
    secret = api.get("Secret", ns, secret_name["secretName"])
    config_dir = mount(pod.folder / "config", {k: v.encode() for k, v in cm["data"].items()})
    certs_dir = mount(
        pod.folder / "certs", {k: base64.b64decode(v) for k, v in secret["data"].items()}
    )
    # The init container: the image's copy of the script is this checkout's.
    capture_cmd = init["weft-capture"]["command"] + init["weft-capture"]["args"]
    assert capture_cmd[:2] == ["/bin/sh", kobjects.CAPTURE_SCRIPT]
    subprocess.run(
        [*pod.host.exec_prefix(), "sh", str(capture.SCRIPT), *capture_cmd[2:]], check=True
    )
    # The app: the demo service on the port the intent gives it.
    listeners = json.loads(cm["data"]["listeners.json"])
    ports = {n: {"addr": a, "protocol": "http"} for n, a in listeners["app"].items()}
    if service == "api":
        pod.run(
            "app",
            [*pod.host.exec_prefix(), str(Path(sys.executable).parent / "weft"), "demo-app"],
            {**CLEAN_ENV, "WEFT_SERVICE": f"{ns}/{service}", "WEFT_INSTANCE": instance,
             "WEFT_PORTS": json.dumps(ports)},
        )  # fmt: skip
        # What the app's own readiness probe would hold the pod for: the sidecar alone can be
        # ready before the app listens, and would answer 502 until it does.
        for spec in ports.values():
            port = int(spec["addr"].rsplit(":", 1)[1])
            wait_for(lambda p=port: _listening(pod, p), timeout=30)
    # The native sidecar, with its container's arguments and the volumes where they point.
    sidecar = init["weft-sidecar"]
    assert sidecar["securityContext"]["runAsUser"] == capture.PROXY_UID
    args = [
        a.replace(kobjects.CONFIG_DIR, str(config_dir)).replace(kobjects.CERTS_DIR, str(certs_dir))
        for a in sidecar["args"]
    ]
    assert args[0] == "sidecar"
    pod.run(
        "sidecar",
        [*pod.host.exec_prefix(uid=capture.PROXY_UID), sys.executable, "-m",
         "reconciler.sidecar", *args[1:]],
        {**CLEAN_ENV, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip


def _listening(pod: Pod, port: int) -> bool:
    """Whether something listens on TCP `port` in the pod's network namespace."""
    done = subprocess.run(
        [*pod.host.exec_prefix(), "ss", "-Hltn", f"sport = :{port}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return bool(done.stdout.strip())


def curl(pod: Pod, url: str) -> tuple[int, str]:
    done = subprocess.run(
        [*pod.host.exec_prefix(), "curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}",
         url],
        capture_output=True, env=CLEAN_ENV, check=False, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        return -done.returncode, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


@pytest.fixture
def pods(template_cluster: ControlPlane) -> Iterator[dict[str, Pod]]:
    api = template_cluster.admin()
    # The app team's ClusterIP Service that clients call by name.
    service = api.create({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "b"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 8080, "targetPort": 8081}]},
    })  # fmt: skip
    cluster_ip = service["spec"]["clusterIP"]
    target = KubernetesTarget(api, image="registry.example/weft:test")
    plan = target.plan(desired_template(), target.observe())
    target.apply(plan)
    target.prune(plan)

    tag = secrets.token_hex(3)
    net = netns.Network(tag, netns.free_subnet(tag))
    net.create()
    # Every pod resolves what cluster DNS would give it: the Service's ClusterIP and, for the
    # headless discovery Services, the pods' own addresses. 10.96.0.0/16 routes via the bridge
    # like any other address, and capture takes the connection before it gets there.
    names = {
        "api.b.svc.cluster.local": cluster_ip,
        "api-v1-weft.b.svc.cluster.local": net.address(1),
        "api-v2-weft.b.svc.cluster.local": net.address(2),
    }
    running: dict[str, Pod] = {}
    # Volumes live where UID 1337 can traverse to them, as a kubelet's do (pytest's own
    # temporary directories are root's alone).
    root = Path(tempfile.mkdtemp(prefix="weft-pods-"))
    root.chmod(0o755)
    try:
        for index, (ns, workload, svc, instance) in enumerate(PODS):
            host = net.add(index, {**names, f"{workload}.{ns}": net.address(index)})
            pod = Pod(host, root / workload)
            pod.folder.mkdir()
            running[workload] = pod
            start_pod(api, pod, ns, workload, service=svc, instance=instance)
        for pod in running.values():
            admin = f"{pod.host.address}:{kobjects.ADMIN_PORT}"
            wait_for(lambda a=admin: _ready(a), timeout=30)
        yield running
    except BaseException:
        print("\n".join(p.logs() for p in running.values()))
        raise
    finally:
        for pod in running.values():
            pod.stop()
        net.remove()
        shutil.rmtree(root, ignore_errors=True)


def _ready(admin: str) -> bool:
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*",
         f"http://{admin}/ready"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout == "200"


def test_the_injected_pod_spec_captures_and_carries_traffic_over_mtls(
    pods: dict[str, Pod],
) -> None:
    web = pods["web"]
    seen: dict[str, int] = {}
    for _ in range(20):
        code, body = curl(web, "http://api.b.svc.cluster.local:8080/hello")
        assert code == 200, body
        answer = json.loads(body)
        # The api pod's sidecar verified a/web's certificate and told the app who called.
        assert answer["caller"] == "spiffe://weft.local/ns/a/sa/web", answer
        seen[answer["instance"]] = seen.get(answer["instance"], 0) + 1
    assert seen.get("v1", 0) > seen.get("v2", 0), seen  # the template's 90/10 canary

    # a/web may not call c/ledger: its sidecar has no route there, and says so.
    code, body = curl(web, "http://ledger.c.svc.cluster.local:8080/")
    assert code != 200, body


def test_a_caller_without_a_sidecar_cannot_reach_the_app_port(pods: dict[str, Pod]) -> None:
    """Plaintext straight to the api pod's port meets its sidecar's STRICT mTLS listener."""
    pod_ip = pods["api-v1"].host.address
    code, body = curl(pods["web"], f"http://{pod_ip}:8081/")
    # Captured in web's namespace too: an address outside the mesh is refused there.
    assert code != 200, body
    done = subprocess.run(
        ["curl", "-sS", "-m", "5", "--noproxy", "*", f"http://{pod_ip}:8081/"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0 or "200" not in done.stdout
