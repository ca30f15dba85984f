"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager.

The binaries are built from `tools/kube` by `tools/kube/build.sh` (cached outside the repository;
the first build takes a quarter of an hour on 2 cores). A test that asks for `kube` never skips: a
missing binary is built, and a failed build or start fails the test with the reason.

Everything listens on 127.0.0.1 at ports picked at start. The API server serves TLS with a
certificate made here, authenticates static bearer tokens (an admin in `system:masters`, the
controller manager as itself) and ServiceAccount tokens signed with a key made here, and
authorizes with RBAC, so a missing permission is a real 403. The controller manager runs the
garbage-collector, namespace, service-account and job controllers: deleting a namespace really
deletes what is in it, and a Job gets its pods (Pending, with no node to run them).

`tests/conftest.py` registers the session fixture `kube` and the per-test `namespace`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from reconciler.targets.kubernetes.api import Api, ApiError
from tests import harness

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tools" / "kube" / "build.sh"
BUILD_TIMEOUT = 45 * 60
START_TIMEOUT = 90.0
# With nodes: the root-CA publisher (pods' token volumes need kube-root-ca.crt), the
# node-lifecycle controller, which lifts a new node's not-ready taint once it is Ready, and the
# controllers that turn Deployments into pods, and the EndpointSlices cluster DNS answers from.
NODE_CONTROLLERS = (
    ",root-ca-certificate-publisher-controller,node-lifecycle-controller"
    ",deployment-controller,replicaset-controller,statefulset-controller"
    ",endpointslice-controller"
)


def binaries() -> Path:
    """The directory with kube-apiserver, kube-controller-manager and etcd; built if missing."""
    return harness.build(BUILD, "the Kubernetes control plane", BUILD_TIMEOUT)


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _serving_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a serving certificate for 127.0.0.1 and localhost: (ca.crt, tls.crt, tls.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weft test kube CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    # The kubernetes Service's ClusterIP, which pods on a node dial.
                    x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        _write(folder / "ca.crt", ca.public_bytes(pem), 0o644),
        _write(folder / "tls.crt", cert.public_bytes(pem), 0o644),
        _write(
            folder / "tls.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    )


def kubeconfig(server: str, ca: Path, token: str, user: str) -> str:
    return f"""\
apiVersion: v1
kind: Config
clusters:
- name: weft-test
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: {user}
  user: {{token: "{token}"}}
contexts:
- name: weft-test
  context: {{cluster: weft-test, user: {user}}}
current-context: weft-test
"""


@dataclasses.dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager, and how to reach them."""

    bin_dir: Path
    work: Path
    server: str = ""
    ca: Path = Path()
    admin_kubeconfig: Path = Path()
    admin_token: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    _apiserver_args: list[str] = dataclasses.field(default_factory=list)

    def admin(self) -> Api:
        return Api.from_kubeconfig(self.admin_kubeconfig)

    def api_as(self, token: str) -> Api:
        return Api.with_token(self.server, token, str(self.ca))

    def kubeconfig_for(self, token: str, name: str) -> Path:
        return _write(
            self.work / f"{name}.kubeconfig", kubeconfig(self.server, self.ca, token, name)
        )

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
        done = subprocess.run(
            [kubectl, "--kubeconfig", str(self.admin_kubeconfig), *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def token_for(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A real ServiceAccount token from the TokenRequest API."""
        answer = self.admin().request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return str(answer["status"]["token"])

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str]) -> None:
        with (self.work / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_apiserver(self) -> None:
        self.stop("kube-apiserver")

    def start_apiserver(self) -> None:
        self._spawn("kube-apiserver", self._apiserver_args)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        api = self.admin()
        last = ""
        while time.monotonic() < deadline:
            proc = self.procs["kube-apiserver"]
            if proc.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited: {self.log_tail('kube-apiserver')}")
            try:
                api.request("GET", "/readyz")
                return
            except Exception as e:
                last = str(e)
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready in {START_TIMEOUT:.0f} s: {last}")

    def log_tail(self, name: str, n: int = 3000) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def close(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self.stop(name)


def start(bin_dir: Path, work: Path, nodes: tuple[str, ...] = ()) -> ControlPlane:
    """Starts the control plane; with `nodes`, also what a kubelet of each name needs: a token
    as `system:node:<name>` in `system:nodes`, the Node authorizer and NodeRestriction (so each
    kubelet may touch only its own Node and its pods' objects, as in a real cluster), a token for
    kube-scheduler, and the root-CA publisher that puts `kube-root-ca.crt` in every namespace
    for the pods' ServiceAccount token volumes. Their kubeconfigs are `<name>.kubeconfig` in
    `work`."""
    cp = ControlPlane(bin_dir, work)
    etcd_client, etcd_peer, secure = harness.free_ports(3)
    pki = work / "pki"
    pki.mkdir(mode=0o700)
    ca, cert, key = _serving_pki(pki)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private = _write(
        pki / "sa.key",
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    sa_public = _write(
        pki / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )
    admin_token, kcm_token = secrets.token_hex(24), secrets.token_hex(24)
    node_users = _node_users(nodes)
    tokens = _write(
        pki / "tokens.csv",
        f'{admin_token},admin,{uuid.uuid4()},"system:masters"\n'
        f"{kcm_token},system:kube-controller-manager,{uuid.uuid4()}\n"
        + "".join(f"{token},{user},{uuid.uuid4()}{groups}\n" for user, groups, token in node_users),
    )
    cp.server, cp.ca, cp.admin_token = f"https://127.0.0.1:{secure}", ca, admin_token
    cp.admin_kubeconfig = cp.kubeconfig_for(admin_token, "admin")
    kcm_kubeconfig = cp.kubeconfig_for(kcm_token, "kube-controller-manager")
    for user, _, token in node_users:
        # system:node:n1 -> node-n1.kubeconfig; system:kube-scheduler -> kube-scheduler.kubeconfig
        cp.kubeconfig_for(token, user.removeprefix("system:").replace(":", "-"))

    cp._spawn(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=weft-test",
            f"--data-dir={work / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=weft-test=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls=",
            "--log-level=warn",
            # Test data is thrown away; fsync per write would make every apply wait on the disk.
            "--unsafe-no-fsync",
        ],
    )
    cp._apiserver_args = [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        # The kubernetes Service's endpoint would be 127.0.0.1, which the reconciler refuses;
        # no pod here needs it.
        "--endpoint-reconciler-type=none",
        f"--secure-port={secure}",
        f"--tls-cert-file={cert}",
        f"--tls-private-key-file={key}",
        f"--token-auth-file={tokens}",
        "--anonymous-auth=false",
        f"--authorization-mode={'Node,RBAC' if nodes else 'RBAC'}",
        *(["--enable-admission-plugins=NodeRestriction"] if nodes else []),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={sa_public}",
        f"--service-account-signing-key-file={sa_private}",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        f"--cert-dir={pki}",
        "--v=1",
    ]
    cp._spawn("kube-apiserver", cp._apiserver_args)
    try:
        cp._wait_ready()
        _keep_podtemplate_params(cp.admin())
    except (RuntimeError, ApiError):
        cp.close()
        raise
    cp._spawn(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            # The job controller makes a Job's pods even with no node (they stay Pending), so
            # tests see the pods admission really produced.
            "--controllers=garbage-collector-controller,namespace-controller,"
            "serviceaccount-controller,serviceaccount-token-controller,job-controller"
            + (NODE_CONTROLLERS if nodes else ""),
            f"--service-account-private-key-file={sa_private}",
            f"--root-ca-file={ca}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--leader-elect=false",
            # Each controller acts as its own ServiceAccount with its bootstrap RBAC role, as in
            # a real cluster (the controller manager's own user may do little).
            "--use-service-account-credentials=true",
            "--v=1",
        ],
    )
    return cp


ADMISSION = "/apis/admissionregistration.k8s.io/v1"


def _keep_podtemplate_params(api: Api) -> None:
    """A policy bound with PodTemplate parameters that matches no pod, for the whole session.

    kube-apiserver (1.37 included; kubernetes/kubernetes#130887, fix proposed in #141015) stops
    its informer of a built-in parameter kind for good once no binding uses that kind, even for
    a second: an admission policy bound again afterwards sees only the parameters it saw before.
    The install tests delete deploy/40-jobs.yaml's binding each time they uninstall, which
    would leave every later test's Job pods judged by stale PodTemplates; in a cluster, only a
    restart of the API server recovers (docs/kubernetes.md, *Jobs*). This binding outlives
    them, as another binding of that kind would in a real cluster."""
    name = "test-keep-podtemplate-params"
    api.request(
        "POST",
        f"{ADMISSION}/mutatingadmissionpolicies",
        body={
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "paramKind": {"apiVersion": "v1", "kind": "PodTemplate"},
                "reinvocationPolicy": "Never",
                "matchConstraints": {
                    "resourceRules": [
                        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                         "resources": ["pods"]}
                    ],
                    "objectSelector": {"matchLabels": {"weft.test/never": "true"}},
                },
                "mutations": [
                    {"patchType": "JSONPatch", "jsonPatch": {
                        "expression": '[JSONPatch{op: "test", path: "/kind", value: "Pod"}]'}}
                ],
            },
        },
    )  # fmt: skip
    api.request(
        "POST",
        f"{ADMISSION}/mutatingadmissionpolicybindings",
        body={
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "paramRef": {"name": "none", "parameterNotFoundAction": "Allow"},
            },
        },
    )


def _node_users(nodes: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(user, groups column, token) for each kubelet and, if there are any, the scheduler."""
    users = [(f"system:node:{n}", ',"system:nodes"', secrets.token_hex(24)) for n in nodes]
    if nodes:
        users.append(("system:kube-scheduler", "", secrets.token_hex(24)))
    return users


@pytest.fixture(scope="session")
def kube() -> Iterator[ControlPlane]:
    bin_dir = binaries()
    work = Path(tempfile.mkdtemp(prefix="weft-kube-"))
    try:
        cp = start(bin_dir, work)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield cp
    finally:
        cp.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def namespace(kube: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own, deleted (with everything in it) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    api = kube.admin()
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiError):
        api.delete("Namespace", None, name)


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {predicate}")
        time.sleep(interval)
