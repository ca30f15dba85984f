"""A real single-node Kubernetes cluster for tests: the control plane of `tests/kube.py` plus
kube-scheduler, containerd (with runc) and a kubelet, on this machine.

What runs, and where it comes from:
- kubelet and kube-scheduler v1.37.2, built from `tools/node` (cached like `tools/kube`), and
  CoreDNS from `tools/dns`, the cluster DNS, on the node's address;
- containerd 1.6 and runc from Debian's packages, and the CNI plugins bridge, host-local,
  loopback and portmap from Debian's `containernetworking-plugins` (installed when missing);
- the images, from `tools/node/images.sh` (no Docker, no registry): imported into this
  containerd's `k8s.io` namespace before the kubelet starts, so pods use them with
  `imagePullPolicy: Never` and the sandboxes use the pause image built there;
- kube-network-policies v0.8.0 from `tools/netpol`, the SIG Network agent that enforces
  NetworkPolicy: the first packet of every pod connection is queued (NFQUEUE) to it, and it
  accepts or drops the connection by the policies the API server holds (see `_start_netpol`).

The machine mounts cgroup v1, which kubelet 1.35+ refuses by default: the kubelet runs with
`failCgroupV1: false` and the `cgroupfs` driver (containerd 1.6 cannot tell the kubelet its
driver, so the kubelet's own setting is the one used). Every listener is on 127.0.0.1 (API
server, kubelet, containerd's streaming server) or a unix socket in the node's work folder;
pods get addresses in a private 10.253.x.0/24 on a bridge of this node's own, which the test
removes with everything else when it is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.targets.local import netns
from tests import harness, kube

ROOT = Path(__file__).resolve().parent.parent
NODE_BUILD = ROOT / "tools" / "node" / "build.sh"
DNS_BUILD = ROOT / "tools" / "dns" / "build.sh"
NETPOL_BUILD = ROOT / "tools" / "netpol" / "build.sh"
IMAGES_BUILD = ROOT / "tools" / "node" / "images.sh"
NODE_NAME = "weft-node"
CNI_BIN = Path("/usr/lib/cni")
# Debian package for each program the node needs.
PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    str(CNI_BIN / "bridge"): "containernetworking-plugins",
    "mmdebstrap": "mmdebstrap",
    "buildah": "buildah",
    "ip": "iproute2",
    "mount": "mount",
    "iptables": "iptables",
    "unshare": "util-linux",
}
READY_TIMEOUT = 120.0
PAUSE = "localhost/weft/pause:v1.37.2"
BASE = "localhost/weft/debian:bookworm"
WEFT = "localhost/weft/weft:dev"
WEFT_IMAGE_BUILD = ROOT / "tools" / "node" / "weft-image.sh"
RELEASED_IMAGE = "ghcr.io/weft-mesh/weft:0.1.0"  # what deploy/ runs
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_RANGE = "10.96.0.0/16"  # tests/kube.py's --service-cluster-ip-range
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def install_missing() -> None:
    """Installs from Debian whatever program of PACKAGES is missing (a test never skips)."""
    missing = sorted(
        {pkg for prog, pkg in PACKAGES.items() if not (shutil.which(prog) or Path(prog).exists())}
    )
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def _built(script: Path, what: str) -> Path:
    return harness.build(script, what, kube.BUILD_TIMEOUT)


def _free_port() -> int:
    return harness.free_ports(1)[0]


@dataclasses.dataclass
class Node:
    """containerd, a kubelet and kube-scheduler beside a running control plane."""

    cp: kube.ControlPlane
    bin_dir: Path
    work: Path
    images: Path
    weft_image: Path
    dns_bin: Path
    netpol_bin: Path
    subnet: int = 0
    bridge: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    _netns_before: set[str] = dataclasses.field(default_factory=set)
    _chain: str = ""
    _netpol_chain: str = ""
    _bridge_nf_was: str = ""
    netpol_queue: int = 0
    netpol_metrics: str = ""

    @property
    def socket(self) -> Path:
        return self.work / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def pod_address(self, host: int) -> str:
        return f"{netns.PREFIX}.{self.subnet}.{host}"

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str]) -> None:
        with (self.work / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log_tail(self, name: str, n: int = 3000) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def _stop(self, name: str, timeout: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log_tail(name)}")

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        self._netns_before = set(_cni_netns())
        (self.work / "containerd").mkdir(mode=0o700)
        self._start_containerd()
        for tar in (self.images / "pause.tar", self.images / "base.tar", self.weft_image):
            self.ctr("images", "import", str(tar))
        # deploy/ names the released image; this one stands in for it, so deploy/ applies as is.
        self.ctr("images", "tag", "--force", WEFT, RELEASED_IMAGE)
        self._make_network()
        # The kubernetes Service, as a pod's in-cluster client dials it (no kube-proxy runs).
        self.expose(KUBERNETES_SERVICE_IP, 443, int(self.cp.server.rsplit(":", 1)[1]))
        self._start_dns()
        self._start_netpol()
        self._start_kubelet()
        self._start_scheduler()
        self.wait_ready()

    def _start_containerd(self) -> None:
        c = self.work / "containerd"
        config = c / "config.toml"
        config.write_text(
            f"""\
version = 2
root = "{c / "root"}"
state = "{c / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  # `kubectl exec` and logs go through this; 127.0.0.1 at a port picked at start.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  # This machine's sessions run with an oom_score_adj they may not lower; the kubelet asks
  # -998 for sandboxes, which runc would fail to set. Clamp to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.work / "cni" / "net.d"}"
"""
        )
        self._spawn("containerd", ["containerd", "--config", str(config), "--log-level", "warn"])
        deadline = time.monotonic() + 30
        while not self.socket.exists() or not self._ctr_answers():
            self._alive("containerd")
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd not up in 30 s:\n{self.log_tail('containerd')}")
            time.sleep(0.2)

    def _ctr_answers(self) -> bool:
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), "version"], capture_output=True, check=False
        )
        return done.returncode == 0

    def _make_network(self) -> None:
        """The pod network: its bridge, made here rather than by the CNI plugin at the first pod
        (its address .1 is the node's InternalIP: a kubelet refuses a loopback one), and the CNI
        configuration containerd reads."""
        tag = secrets.token_hex(3)
        self.subnet = netns.free_subnet(tag)
        self.bridge = f"weftn{tag}"
        netns.ip("link", "add", self.bridge, "type", "bridge")
        netns.ip("addr", "add", f"{self.pod_address(1)}/24", "dev", self.bridge)
        netns.ip("link", "set", self.bridge, "up")
        conf_dir = self.work / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "weft-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    # The bridge holds .1: the kubelet's probes and the tests reach pods through it.
                    "isGateway": True,
                    # Pods talk to each other and to this machine only: no NAT to anywhere else.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": f"{netns.PREFIX}.{self.subnet}.0/24"}]],
                        "dataDir": str(self.work / "cni" / "ipam"),
                        # Only the Service range goes to the node (no default route): pods reach
                        # each other, the node and what `expose` maps, and nothing beyond.
                        "routes": [{"dst": SERVICE_RANGE}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (conf_dir / "10-weft-node.conflist").write_text(json.dumps(conflist, indent=2))

    def expose(self, address: str, port: int, local_port: int) -> None:
        """Makes 127.0.0.1:`local_port` (a server of the test's) reachable from pods at
        `address`:`port`, by DNAT in a chain of this node's own, for packets from its bridge.
        The bridge's route_localnet lets those packets be routed to loopback."""
        if not self._chain:
            self._chain = f"WEFT-{self.bridge.upper()}"
            _iptables("-t", "nat", "-N", self._chain)
            _iptables("-t", "nat", "-A", "PREROUTING", "-i", self.bridge, "-j", self._chain)
            Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet").write_text("1")
        _iptables(
            "-t", "nat", "-A", self._chain, "-d", address, "-p", "tcp", "--dport", str(port),
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{local_port}",
        )  # fmt: skip

    @property
    def node_ip(self) -> str:
        return self.pod_address(1)

    def _start_dns(self) -> None:
        """CoreDNS on the node's address, port 53, answering cluster.local from the API server
        (Services, headless Services' pod addresses): the cluster DNS the kubelet gives pods.
        Nothing else is answered, so no pod looks anything up outside. It reads the API as
        admin: the test's own infrastructure, like the scheduler."""
        corefile = self.work / "Corefile"
        corefile.write_text(
            f"""\
cluster.local:53 {{
    bind {self.node_ip}
    errors
    kubernetes cluster.local {{
        kubeconfig {self.cp.admin_kubeconfig} weft-test
        pods disabled
    }}
}}
"""
        )
        self._spawn("coredns", [str(self.dns_bin / "coredns"), "-conf", str(corefile)])

    def _start_netpol(self) -> None:
        """kube-network-policies, the NetworkPolicy agent, as a process of this node (like
        CoreDNS) with a ServiceAccount token of its own and its upstream RBAC (list and watch
        pods, namespaces, networkpolicies).

        The agent decides in user space: it reads each connection's first packet from an
        NFQUEUE and accepts or drops it by the policies selecting its source and destination
        pods (pods no policy selects are accepted). Upstream diverts those packets with an
        nftables `queue` rule, which this machine's kernel cannot run (no CONFIG_NFT_QUEUE;
        the agent logs the failed sync and goes on), so the same diversion is made here with
        iptables' NFQUEUE target, in a mangle chain of this node's own in POSTROUTING, where
        upstream puts it: bridged pod-to-pod packets pass it (br_netfilter), replies and the
        node's root-owned traffic (the kubelet's probes) are left alone, as upstream does. No
        `--queue-bypass`: with the agent gone, new pod connections fail closed.

        It reads the API only by in-cluster config, so it runs in a mount namespace of its
        own whose /run holds the token and CA where client-go looks for them, with
        KUBERNETES_SERVICE_HOST and _PORT naming the API server on 127.0.0.1."""
        api = self.cp.admin()
        name = "kube-network-policies"
        for path, body in (
            (
                "/api/v1/namespaces/kube-system/serviceaccounts",
                {"metadata": {"name": name, "namespace": "kube-system"}},
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                {
                    "metadata": {"name": name},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "resources": ["pods", "namespaces"],
                            "verbs": ["list", "watch"],
                        },
                        {
                            "apiGroups": ["networking.k8s.io"],
                            "resources": ["networkpolicies"],
                            "verbs": ["list", "watch"],
                        },
                    ],
                },
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                {
                    "metadata": {"name": name},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": name,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": name, "namespace": "kube-system"}
                    ],
                },
            ),
        ):
            api.request("POST", path, body=body)
        secrets_dir = self.work / "netpol"
        secrets_dir.mkdir(mode=0o700)
        token = secrets_dir / "token"
        token.write_text(self.cp.token_for("kube-system", name, seconds=24 * 3600))
        token.chmod(0o600)
        shutil.copy(self.cp.ca, secrets_dir / "ca.crt")

        # A queue no other agent on this machine listens on.
        taken = _bound_queues()
        self.netpol_queue = next(q for q in range(100, 65535) if q not in taken)
        self.netpol_metrics = f"127.0.0.1:{_free_port()}"
        host, port = self.cp.server.removeprefix("https://").rsplit(":", 1)
        mount = "/run/secrets/kubernetes.io/serviceaccount"
        script = (
            # Private mounts (unshare's default): nothing here is seen outside.
            f"mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p {mount} && "
            f'cp "$1"/token "$1"/ca.crt {mount}/ && shift && exec "$@"'
        )
        self._spawn(
            "netpol",
            [
                "env", f"KUBERNETES_SERVICE_HOST={host}", f"KUBERNETES_SERVICE_PORT={port}",
                "unshare", "--mount", "sh", "-ec", script, "sh", str(secrets_dir),
                str(self.netpol_bin / name),
                f"--hostname-override={NODE_NAME}",
                f"--nfqueue-id={self.netpol_queue}",
                f"--metrics-bind-address={self.netpol_metrics}",
                # Pods come and go with the kubelet's own events; no NRI socket is served.
                "--disable-nri",
                # Pods' DNS is the node's own address (the INPUT path, never queued).
                "--netfilter-bug-1766-fix=false",
                "--v=2",
            ],
        )  # fmt: skip
        # Bridged pod-to-pod packets reach iptables only with br_netfilter's switch on; it is
        # put back as it was when the node closes.
        if not BRIDGE_NF.exists():
            raise RuntimeError(f"{BRIDGE_NF} is missing: the kernel needs br_netfilter")
        if BRIDGE_NF.read_text().strip() != "1":
            self._bridge_nf_was = BRIDGE_NF.read_text().strip()
            BRIDGE_NF.write_text("1\n")
        subnet = f"{netns.PREFIX}.{self.subnet}.0/24"
        self._netpol_chain = f"WEFT-NP-{self.bridge.upper()}"
        _iptables("-t", "mangle", "-N", self._netpol_chain)
        for rule in (
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
            ["-m", "owner", "--uid-owner", "0", "-j", "RETURN"],
            ["-j", "NFQUEUE", "--queue-num", str(self.netpol_queue)],
        ):
            _iptables("-t", "mangle", "-A", self._netpol_chain, *rule)
        for side in ("-s", "-d"):
            _iptables("-t", "mangle", "-A", "POSTROUTING", side, subnet, "-j", self._netpol_chain)
        # Ready once it listens on its queue (after its informers have synced).
        deadline = time.monotonic() + 60
        while self.netpol_queue not in _bound_queues():
            self._alive("netpol")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} never listened on its queue:\n{self.log_tail('netpol')}"
                )
            time.sleep(0.2)

    def _remove_netpol_rules(self) -> None:
        if self._bridge_nf_was:
            BRIDGE_NF.write_text(f"{self._bridge_nf_was}\n")
        if not self._netpol_chain:
            return
        subnet = f"{netns.PREFIX}.{self.subnet}.0/24"
        for side in ("-s", "-d"):
            subprocess.run(
                ["iptables", "-t", "mangle", "-D", "POSTROUTING", side, subnet,
                 "-j", self._netpol_chain],
                capture_output=True, check=False,
            )  # fmt: skip
        for op in ("-F", "-X"):
            subprocess.run(
                ["iptables", "-t", "mangle", op, self._netpol_chain],
                capture_output=True,
                check=False,
            )

    def _start_kubelet(self) -> None:
        k = self.work / "kubelet"
        k.mkdir()
        config = k / "config.yaml"
        # JSON is YAML; the kubelet reads either.
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # This machine mounts cgroup v1 (see docs/operations.md).
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "address": "127.0.0.1",
                    "port": _free_port(),
                    "readOnlyPort": 0,
                    "healthzPort": 0,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                    },
                    "authorization": {"mode": "Webhook"},
                    # The disk this runs on is shared and often more than 85 % full: the
                    # defaults would evict the test's pods and collect its imported images.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "failSwapOn": False,
                    # Under the test's folder, not /var/log/pods, so nothing outlives the test.
                    "podLogsDir": str(k / "pod-logs"),
                    "clusterDomain": "cluster.local",
                    "clusterDNS": [self.node_ip],
                    "nodeStatusUpdateFrequency": "4s",
                    "syncFrequency": "10s",
                    "shutdownGracePeriod": "0s",
                    "serializeImagePulls": False,
                    "rotateCertificates": False,
                    "serverTLSBootstrap": False,
                }
            )
        )
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={self.work / f'node-{NODE_NAME}.kubeconfig'}",
                f"--root-dir={k / 'root'}",
                f"--cert-dir={k / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        kubeconfig = self.work / "kube-scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
            ],
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """The Node object once its Ready condition is True."""
        api = self.cp.admin()
        deadline = time.monotonic() + timeout
        last: Any = "no Node object yet"
        while time.monotonic() < deadline:
            for name in ("containerd", "coredns", "netpol", "kubelet", "kube-scheduler"):
                self._alive(name)
            with contextlib.suppress(Exception):
                node = api.request("GET", f"/api/v1/nodes/{NODE_NAME}")
                conditions = {c["type"]: c for c in node["status"].get("conditions", [])}
                last = conditions.get("Ready", "no Ready condition")
                if conditions.get("Ready", {}).get("status") == "True":
                    return dict(node)
            time.sleep(0.5)
        raise RuntimeError(
            f"node {NODE_NAME} not Ready in {timeout:.0f} s: {last}\n"
            f"kubelet:\n{self.log_tail('kubelet')}"
        )

    def diagnose(self, namespace: str) -> str:
        """What went wrong with a namespace's pods: their status, the events, the node's logs."""
        api = self.cp.admin()
        pods = api.request("GET", f"/api/v1/namespaces/{namespace}/pods")
        events = api.request("GET", f"/api/v1/namespaces/{namespace}/events")
        lines = [
            f"pod {p['metadata']['name']}: {json.dumps(p.get('status', {}))[:3000]}"
            for p in pods.get("items", [])
        ]
        lines += [
            f"event {e.get('reason')}: {e.get('message')}" for e in events.get("items", [])[-30:]
        ]
        for log in sorted((self.work / "kubelet" / "pod-logs").glob(f"{namespace}_*/*/*.log")):
            lines.append(f"--- {log.parent.parent.name}/{log.parent.name}")
            lines.append(log.read_text(errors="replace")[-2000:])
        for name in ("kubelet", "containerd", "kube-scheduler", "coredns"):
            lines.append(f"--- {name}\n{self.log_tail(name)}")
        return "\n".join(lines)

    def wait_pod_phase(
        self, namespace: str, name: str, phases: set[str], timeout: float = 90
    ) -> dict[str, Any]:
        """The Pod once its phase is one of `phases`; else an AssertionError with diagnose()."""
        api = self.cp.admin()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
            if pod["status"].get("phase") in phases:
                return dict(pod)
            time.sleep(0.5)
        raise AssertionError(
            f"pod {namespace}/{name} not {phases} in {timeout:.0f} s\n{self.diagnose(namespace)}"
        )

    def wait_pod_ready(self, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
        """The Pod once its Ready condition is True; else an AssertionError with diagnose()."""
        api = self.cp.admin()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") == "True":
                return dict(pod)
            time.sleep(0.5)
        raise AssertionError(
            f"pod {namespace}/{name} not Ready in {timeout:.0f} s\n{self.diagnose(namespace)}"
        )

    # ------------------------------------------------------------------ stop

    def close(self) -> None:
        """Stops everything this node started and removes what it left on the machine: pod
        sandboxes and their network namespaces, shims, mounts under the work folder, the bridge."""
        self._stop("kube-scheduler")
        self._stop("coredns")
        if "kubelet" in self.procs and "containerd" in self.procs:
            self._drain()
        self._stop("kubelet")
        self._remove_netpol_rules()
        self._stop("netpol")
        if "containerd" in self.procs:
            self._remove_containers()
        self._stop("containerd")
        self._kill_shims()
        self._unmount_all()
        for name in set(_cni_netns()) - self._netns_before:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        if self._chain:
            subprocess.run(
                ["iptables", "-t", "nat", "-D", "PREROUTING", "-i", self.bridge, "-j", self._chain],
                capture_output=True, check=False,
            )  # fmt: skip
            for op in ("-F", "-X"):
                subprocess.run(
                    ["iptables", "-t", "nat", op, self._chain], capture_output=True, check=False
                )
        if self.bridge:
            with contextlib.suppress(netns.NetnsError):
                netns.ip("link", "delete", self.bridge)
        _remove_cgroups("kubepods")

    def _drain(self, timeout: float = 30) -> None:
        """Deletes every pod and waits for the kubelet to stop their sandboxes, which is when
        the CRI plugin runs the CNI teardown (veth, address, network namespace)."""
        api = self.cp.admin()
        with contextlib.suppress(Exception):
            for pod in api.request("GET", "/api/v1/pods").get("items", []):
                meta = pod["metadata"]
                api.request(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    body={"gracePeriodSeconds": 0},
                )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                if not self.ctr("tasks", "list", "--quiet").split():
                    return
            time.sleep(0.5)

    def _remove_containers(self) -> None:
        """Kills every task and removes every container in containerd's `k8s.io` namespace; the
        CRI plugin tears the pods' networks down as their sandboxes go."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            for cid in self.ctr("containers", "list", "--quiet").split():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
                self.ctr("tasks", "delete", "--force", cid, check=False)
                self.ctr("containers", "delete", cid, check=False)

    def _kill_shims(self) -> None:
        """The runc shims re-parent themselves away from containerd; each names our socket in
        its command line, which is how those of this node (and only those) are found."""
        marker = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                if (
                    cmdline
                    and cmdline[0].endswith(b"containerd-shim-runc-v2")
                    and marker in cmdline
                ):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        prefix = str(self.work)
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        points = [m.split()[1] for m in mounts if m.split()[1].startswith(prefix)]
        for point in sorted(points, key=len, reverse=True):
            # Mount points with spaces are octal-escaped in /proc/self/mounts.
            path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)


def _iptables(*args: str) -> None:
    done = subprocess.run(["iptables", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr.strip()}")


def _bound_queues() -> set[int]:
    """The NFQUEUE numbers some process listens on (the file lists only those)."""
    queues = Path("/proc/net/netfilter/nfnetlink_queue")
    lines = queues.read_text().splitlines() if queues.exists() else []
    return {int(line.split()[0]) for line in lines if line.strip()}


def _remove_cgroups(name: str) -> None:
    """Removes the kubelet's (now empty) cgroup tree `name` from every cgroup v1 hierarchy,
    deepest first; a cgroup something still runs in stays (rmdir refuses it)."""
    for top in Path("/sys/fs/cgroup").glob(f"*/{name}"):
        for folder in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _cni_netns() -> list[str]:
    """The network namespaces containerd's CRI plugin names (`cni-<uuid>`), one per sandbox."""
    folder = Path("/var/run/netns")
    return (
        [p.name for p in folder.iterdir() if p.name.startswith("cni-")] if folder.exists() else []
    )


@contextlib.contextmanager
def running_node() -> Iterator[Node]:
    """A control plane with one Ready node, torn down afterwards whatever happened."""
    install_missing()
    kube_bin = kube.binaries()
    node_bin = _built(NODE_BUILD, "the kubelet and kube-scheduler")
    images = _built(IMAGES_BUILD, "the node test images")
    weft_image = _built(WEFT_IMAGE_BUILD, "Weft's image from deploy/Dockerfile") / "weft.tar"
    dns_bin = _built(DNS_BUILD, "CoreDNS")
    netpol_bin = _built(NETPOL_BUILD, "kube-network-policies")
    work = Path(tempfile.mkdtemp(prefix="weft-node-"))
    cp = kube.start(kube_bin, work, nodes=(NODE_NAME,))
    node = Node(cp, node_bin, work, images, weft_image, dns_bin, netpol_bin)
    try:
        node.start()
        yield node
    finally:
        node.close()
        cp.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.fail("the node tests run containerd and a kubelet, which need root")
    try:
        with running_node() as n:
            yield n
    except RuntimeError as e:
        pytest.fail(str(e))
