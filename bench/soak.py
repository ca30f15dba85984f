"""A soak with faults: constant load through a sidecar pair while everything around it churns.

Two halves run side by side for `--minutes` (the issue asks 20; `make soak` runs 20):

**Data plane**: a load generator -> sidecar A (`weft sidecar`, outbound) -> mTLS -> sidecar B
or B2 (inbound, b/api's two endpoints) -> a backend, all on loopback, the pair of
bench/sidecar_pair.py with b/api's Route retrying (`attempts: 2` on connect-failure, reset and
gateway-error) and ejecting an endpoint after one failed connect, as a production mesh runs a
service with two replicas. Meanwhile:

- every 10 s both sidecars' ProxyConfig files are rewritten (a new revision): a reload;
- every 30 s both get new certificates from the current CA (a rotation), swapped in as a
  Kubernetes Secret volume does (a new folder, then one symlink rename), so no reader ever sees
  a key from one issue and a certificate from another;
- at 40 % of the run a full CA rollover starts: the new root is trusted beside the old one
  (bundle = both), 30 s later certificates are issued by the new CA, 60 s after that the old
  root leaves the bundle;
- at 70 % sidecar B is SIGKILLed and restarted 2 s later. A retries what B's connections
  lose on B2; a request that still fails between the kill and B's readiness (plus one second)
  is counted apart, as the killed sidecar's own, with its cause from A's access log (status
  and response flags). Every other failed request is a finding.

**Control plane**: `weft run --target local` follows a real `git daemon`, with its state
directory on a tmpfs of `--state-mib` MiB (root: a real mount; otherwise a plain folder and
ENOSPC is skipped and said so). Meanwhile a commit lands every 10 s, announced by the signed
webhook as a forge would (the loop also polls every 2 s); at 25 % the git daemon is
stopped for 60 s and started again on the same port; at 55 % the state disk is filled until
ENOSPC for 45 s, then freed. At the end the reconciler must have converged (the status's
`lastAppliedRevision` is the branch head) and no file in the state directory may be half
written (every JSON parses, every PEM parses, nothing left named `*.tmp`/`.*.new`).

**Kubernetes target** (unless `--no-kube`): a real etcd + kube-apiserver +
kube-controller-manager (tests/kube.py, built from tools/kube, cached) with the template's
namespaces and workloads, and a second `weft run --target kubernetes` following the template
mesh from the same git daemon, a commit every 10 s (each one rewrites every sidecar ConfigMap:
they carry the revision). At 80 % the API server is restarted mid-apply: a commit adds 8
Services (8 identities, sidecar ConfigMaps, discovery Services and NetworkPolicies to write);
the soak lists namespace c's ConfigMaps every few milliseconds and SIGKILLs the API server as
soon as the first new one exists, while the rest of that apply is still to be written; it is
started again 5 s later. The Kubernetes reconciler is a real process with leader
election: if it exits because it lost its Lease, it is started again as its Deployment would
(counted). At the end its `lastAppliedRevision` must be the head, a plan against the cluster
must be empty, and every injected workload must have its sidecar ConfigMap and identity
Secret.

Sampled every second: RSS (VmRSS) and open fds of A, B, B2 and the reconciler, requests ok and
failed. Results: `bench/results/soak.json` and SVG plots in `docs/soak/`; the slopes of RSS and
fds (least squares over the second half, per minute) are what "flat" is judged by.

    .venv/bin/python bench/soak.py [--minutes 20] [--rate 200] [--state-mib 64] [--no-kube] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from peers import host, weft  # noqa: E402
from peers.host import Processes  # noqa: E402
from peers.pki import TRUST_DOMAIN  # noqa: E402

from reconciler.identity import authority, workload  # noqa: E402
from reconciler.identity.spiffe import SpiffeId  # noqa: E402
from reconciler.targets.local.binding import bind_endpoints, to_json  # noqa: E402
from tests import sidecars  # noqa: E402

RESULTS = REPO / "bench" / "results" / "soak.json"
PLOTS = REPO / "docs" / "soak"
HOST = "api.b:8080"
BODY = b"weft soak: a small fixed body from the backend.\n"
WEFT = REPO / ".venv" / "bin" / "weft"
IDS = {"web": ("a", "web"), "api": ("b", "api")}
SIDES = ("A", "B", "B2")  # A calls b/api; B and B2 are its two endpoints
# b/api as a service with two replicas is run: retries move what one endpoint loses to the
# other, and a failed connect ejects the endpoint (for 30 s, doubling) so new requests skip it.
SOAK_INTENT = {
    "mesh.yaml": weft.INTENT["mesh.yaml"],
    "services.yaml": f"""\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: web, namespace: a}}
spec: {{ports: [{{name: http, port: 8080}}]}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: api, namespace: b}}
spec:
  ports: [{{name: http, port: 8080}}]
  outlierDetection: {{consecutiveConnectFailures: 1, baseEjectionTime: 30s}}
---
{sidecars.ALLOW_A_TO_B}""",
    "routes.yaml": """\
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: api, namespace: b}
spec:
  host: api.b
  rules:
    - backends: [{}]
      retries: {attempts: 2, retryOn: [connect-failure, reset, gateway-error]}
""",
}


# ------------------------------------------------------------------ the backend


def backend_main(port: int) -> None:
    """A keep-alive HTTP/1.1 server answering every request with BODY (its own process)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(BODY)).encode()
            + b"\r\n\r\n"
            + BODY
        )
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ------------------------------------------------------------------ load


class Load:
    """`connections` keep-alive clients sending `rate` requests/s in all, paced; every failure
    is recorded with its time and kind."""

    def __init__(self, port: int, rate: int, connections: int = 8) -> None:
        self.port, self.rate, self.connections = port, rate, connections
        self.ok = 0
        self.failures: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.connections)))

    async def _client(self, i: int) -> None:
        interval = self.connections / self.rate
        request = f"GET /soak/{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        next_at = time.monotonic() + interval * i / self.connections
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not self.stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), 5
                    )
                reader, writer = conn
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status = head[9:12]
                length = 0
                close = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    if name.strip().lower() == b"connection" and b"close" in value.lower():
                        close = True
                await asyncio.wait_for(reader.readexactly(length), 10)
                if status == b"200":
                    self.ok += 1
                else:
                    self.failures.append((time.time(), f"status {status.decode()}"))
                if close:
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                self.failures.append((time.time(), type(e).__name__))
                if conn is not None:
                    conn[1].close()
                conn = None


# ------------------------------------------------------------------ the sidecar pair


class Certs:
    """Workload certificates swapped in atomically: `<root>/<name>` is a symlink to a fresh
    folder each time, renamed into place in one step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        self.cas = [authority.generate(TRUST_DOMAIN, _now())]
        self.issuing = 0  # index into cas
        self.trusted = [0]

    def link(self, name: str) -> Path:
        return self.root / name

    def write(self) -> None:
        self.generation += 1
        now = _now()
        ca = self.cas[self.issuing]
        bundle = workload.pem([self.cas[i].root for i in self.trusted])
        for name, (ns, sa) in IDS.items():
            cert = ca.issuer().issue(SpiffeId(TRUST_DOMAIN, ns, sa), workload.DEFAULT_LIFETIME, now)
            folder = self.root / f".{name}.{self.generation}"
            folder.mkdir(parents=True)
            (folder / "tls.crt").write_bytes(cert.chain_pem())
            (folder / "tls.key").write_bytes(cert.key.pem())
            (folder / "tls.key").chmod(0o600)
            (folder / "ca.crt").write_bytes(bundle)
            tmp = self.root / f".{name}.link"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(folder.name)
            os.replace(tmp, self.link(name))
            old = self.root / f".{name}.{self.generation - 2}"
            shutil.rmtree(old, ignore_errors=True)

    def start_rollover(self) -> None:
        self.cas.append(authority.generate(TRUST_DOMAIN, _now()))
        self.trusted = [self.issuing, len(self.cas) - 1]

    def issue_from_new(self) -> None:
        self.issuing = len(self.cas) - 1

    def retire_old(self) -> None:
        self.trusted = [self.issuing]


class Pair:
    """Sidecar A (a/web) and b/api's two endpoints B and B2, each a `weft sidecar`."""

    def __init__(self, root: Path, processes: Processes, backend_port: int) -> None:
        self.root, self.processes = root, processes
        self.configs = weft.compile_intent(root / "intent", files=SOAK_INTENT)
        self.certs = Certs(root / "certs")
        self.certs.write()
        self.a_port = host.free_port()
        self.inbound = {"B": host.free_port(), "B2": host.free_port()}
        self.admin = {side: host.free_port() for side in SIDES}
        self.backend_port = backend_port
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.reloads = 0
        self.write_configs()
        for side in SIDES:
            self.start(side)

    def write_configs(self) -> None:
        self.reloads += 1
        revision = f"soak@sha1:{self.reloads:040x}"
        endpoints = [f"127.0.0.1:{port}" for port in self.inbound.values()]
        a = bind_endpoints(self.configs[("a", "web")], {"b/api": endpoints})
        b = dict(self.configs[("b", "api")])
        for side, base, listeners in (
            ("A", a, weft.outbound_listeners(self.a_port)),
            *(
                (side, b, weft.inbound_listeners(port, self.backend_port))
                for side, port in self.inbound.items()
            ),
        ):
            path = self.root / f"{side}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(to_json({**base, "revision": revision}))
            os.replace(tmp, path)  # as the local target writes it: never half a config
            (self.root / f"{side}-listeners.json").write_text(json.dumps(listeners))

    def start(self, side: str) -> None:
        certs = self.certs.link("web" if side == "A" else "api")
        argv = [
            str(WEFT), "sidecar",
            "--config", str(self.root / f"{side}.json"),
            "--certs", str(certs),
            "--listeners", str(self.root / f"{side}-listeners.json"),
            "--admin", f"127.0.0.1:{self.admin[side]}",
            "--workers", "1", "--drain-timeout", "1",
        ]  # fmt: skip
        self.procs[side] = self.processes.start(f"sidecar-{side}", argv, None)
        self.logs[side] = self.processes.logs / f"sidecar-{side}.log"
        url = f"http://127.0.0.1:{self.admin[side]}/ready"
        host.wait_until(f"sidecar {side}", lambda: host.http_get(url)[0] == 200, [self.procs[side]])

    def kill(self, side: str) -> None:
        proc = self.procs[side]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def not_ok(self, side: str) -> list[dict[str, Any]]:
        """`side`'s access log entries that were not answered 2xx (its log is JSON lines)."""
        entries = []
        with contextlib.suppress(OSError), self.logs[side].open() as log:
            for line in log:
                if '"event":"access"' not in line.replace(" ", ""):
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if not 200 <= int(entry.get("status", 0)) < 300:
                        entries.append(entry)
        return entries

    def ejections(self) -> int:
        """How many times A ejected one of b/api's endpoints (its /clusters)."""
        try:
            _, text = host.http_get(f"http://127.0.0.1:{self.admin['A']}/clusters")
            report = json.loads(text)
        except (OSError, ValueError):
            return -1
        return sum(
            int(total.get("count", 0))
            for cluster in report.get("clusters", [])
            for total in (cluster.get("outlier_detection") or {}).get("ejections_total", [])
        )

    def counters(self, side: str) -> dict[str, Any]:
        try:
            _, text = host.http_get(f"http://127.0.0.1:{self.admin[side]}/config_dump")
            dump = json.loads(text)
            return {"reloads": dump.get("reloads"), "rotations": dump.get("rotations")}
        except (OSError, ValueError):
            return {}


# ------------------------------------------------------------------ the control plane


class GitDaemon:
    def __init__(self, root: Path, processes: Processes) -> None:
        self.root, self.processes = root, processes
        self.port = host.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            "git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
            f"--port={self.port}", f"--base-path={self.root}", str(self.root),
        ]  # fmt: skip
        self.proc = self.processes.start("git-daemon", argv, None)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        raise RuntimeError("git daemon did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop([self.proc])
            self.proc = None


def _git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "soak", "GIT_AUTHOR_EMAIL": "soak@example.invalid",
        "GIT_COMMITTER_NAME": "soak", "GIT_COMMITTER_EMAIL": "soak@example.invalid",
        "HOME": str(cwd), "PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1",
    }  # fmt: skip
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


class ControlPlane:
    """`weft run --target local` following a git daemon, its state on a small tmpfs."""

    def __init__(self, root: Path, processes: Processes, state_mib: int) -> None:
        self.root, self.processes = root, processes
        served = root / "served"
        served.mkdir(parents=True)
        self.bare = served / "mesh.git"
        self.work = root / "mesh.work"
        _git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        _git(root, "init", "-q", "-b", "main", str(self.work))
        _git(self.work, "remote", "add", "origin", str(self.bare))
        for rel, text in weft.INTENT.items():
            (self.work / rel).write_text(textwrap.dedent(text))
        self.commits = 0
        self.commit()
        self.daemon = GitDaemon(served, processes)
        self.daemon.start()
        self.state = root / "state"
        self.state.mkdir()
        self.mounted = False
        self.enospc_note = ""
        if os.geteuid() == 0 and shutil.which("mount"):
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={state_mib}m,mode=0700", "tmpfs",
                 str(self.state)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            self.mounted = done.returncode == 0
            if not self.mounted:
                self.enospc_note = f"tmpfs mount failed: {done.stderr.strip()}"
        else:
            self.enospc_note = "not root: the state directory is no tmpfs, ENOSPC skipped"
        url = f"git://127.0.0.1:{self.daemon.port}/mesh.git"
        # Pushes are announced by the signed webhook, as a forge would: a fetch right away,
        # whatever back-off the outages left the poll at (it is also polled every 2 s).
        self.hook_port = host.free_port()
        self.hook_secret = os.urandom(16).hex()
        os.environ["WEFT_WEBHOOK_SECRET"] = self.hook_secret  # inherited by the reconciler only
        argv = [
            str(WEFT), "run", "--repo", url, "--state-dir", str(self.state), "--poll", "2",
            "--webhook", f"127.0.0.1:{self.hook_port}",
        ]  # fmt: skip
        self.proc = processes.start("reconciler", argv, None)
        del os.environ["WEFT_WEBHOOK_SECRET"]
        self.hooks_refused = 0

    def announce(self) -> None:
        if not _announce(self.hook_port, self.hook_secret):
            self.hooks_refused += 1

    def commit(self) -> str:
        self.commits += 1
        # A comment in the intent changes the revision, which the loop reconciles in full.
        services = self.work / "services.yaml"
        text = services.read_text().split("\n# soak ", 1)[0]
        services.write_text(f"{text}\n# soak {self.commits}\n")
        _git(self.work, "add", "-A")
        _git(self.work, "commit", "-q", "-m", f"soak {self.commits}")
        _git(self.work, "push", "-q", "origin", "HEAD")
        return _git(self.work, "rev-parse", "HEAD")

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    @contextlib.contextmanager
    def full_disk(self) -> Iterator[dict[str, Any]]:
        seen: dict[str, Any] = {"filled": False}
        filler = self.state / "filler"
        if self.mounted:
            with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * (1 << 16))
            seen["filled"] = True
        try:
            yield seen
        finally:
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()

    def half_written(self) -> list[str]:
        """Files in the state directory that are not whole: JSON that does not parse, PEM
        without its end line, leftovers of an interrupted atomic write."""
        bad = []
        for path in self.state.rglob("*"):
            if not path.is_file() or path.name == "filler" or "cache" in path.parts:
                continue
            name = path.name
            if name.endswith((".tmp", ".new")) or name.startswith(".status."):
                bad.append(f"{path}: a temporary file left behind")
                continue
            try:
                data = path.read_bytes()
            except OSError as e:
                bad.append(f"{path}: {e}")
                continue
            if name.endswith(".json"):
                try:
                    json.loads(data)
                except ValueError:
                    bad.append(f"{path}: JSON does not parse")
            if name.endswith((".crt", ".key", ".pem")) and data.count(b"-----BEGIN") != data.count(
                b"-----END"
            ):
                bad.append(f"{path}: PEM cut short")
        return bad

    def close(self) -> None:
        self.processes.stop([self.proc])
        self.daemon.stop()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state)], check=False)


class KubeHalf:
    """A real Kubernetes control plane and `weft run --target kubernetes` following the
    template mesh (its own repository on the same git daemon), its API server restarted
    mid-apply on request."""

    IMAGE = "registry.example/weft:soak"

    def __init__(self, root: Path, processes: Processes, daemon: GitDaemon, served: Path):
        from tests import kube, kubeapps  # noqa: PLC0415  # the tests' real harness

        self.kubeapps = kubeapps
        self.root, self.processes = root, processes
        (root / "cluster").mkdir(parents=True)
        self.cp = kube.start(kube.binaries(), root / "cluster")
        self.api = self.cp.admin()
        self.cp.kubectl("apply", "-f", str(kubeapps.DEPLOY))
        for ns in kubeapps.TEMPLATE_NAMESPACES:
            kubeapps.create_namespace(self.api, ns)
        for kind, ns, name, labels, sa in kubeapps.WORKLOADS:
            self.api.apply(kubeapps.workload(kind, ns, name, labels, sa), manager="app-team")
        self.bare = served / "kube.git"
        self.work = root / "kube.work"
        _git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        shutil.copytree(kubeapps.TEMPLATE, self.work)
        _git(root, "init", "-q", "-b", "main", str(self.work))
        _git(self.work, "remote", "add", "origin", str(self.bare))
        self.commits = 0
        self.commit()
        self.state = root / "state"
        self.hook_port = host.free_port()
        self.hook_secret = os.urandom(16).hex()
        self.url = f"git://127.0.0.1:{daemon.port}/kube.git"
        self.restarts: list[dict[str, Any]] = []  # reconciler exits and restarts
        self.apiserver_restart: dict[str, Any] = {}
        self.proc = self.start_reconciler()

    def start_reconciler(self) -> subprocess.Popen[bytes]:
        os.environ["WEFT_WEBHOOK_SECRET"] = self.hook_secret  # inherited by the reconciler only
        argv = [
            str(WEFT), "run", "--target", "kubernetes", "--repo", self.url,
            "--kubeconfig", str(self.cp.admin_kubeconfig), "--image", self.IMAGE,
            "--state-dir", str(self.state), "--poll", "2",
            "--webhook", f"127.0.0.1:{self.hook_port}",
        ]  # fmt: skip
        try:
            return self.processes.start("kube-reconciler", argv, None)
        finally:
            del os.environ["WEFT_WEBHOOK_SECRET"]

    def watch(self, start: float) -> None:
        """A reconciler that exited (it lost its Lease while the API server was down) is
        started again, as its Deployment would be."""
        code = self.proc.poll()
        if code is not None:
            self.restarts.append({"at": round(time.time() - start, 1), "exit_code": code})
            self.proc = self.start_reconciler()

    def commit(self, extra: int = 0) -> str:
        """A commit that changes every sidecar ConfigMap (they carry the revision); with
        `extra`, it also adds that many Services to namespace c, each a new identity, ConfigMap,
        discovery Service and NetworkPolicy: an apply with many steps, to be interrupted."""
        self.commits += 1
        if extra:
            (self.work / "c" / "soak-extra.yaml").write_text(
                "---\n".join(
                    "apiVersion: weft.dev/v1alpha1\nkind: Service\n"
                    f"metadata: {{name: extra{i}, namespace: c}}\n"
                    "spec: {ports: [{name: http, port: 8080}]}\n"
                    for i in range(extra)
                )
            )
        mesh = self.work / "mesh.yaml"
        text = mesh.read_text().split("\n# soak ", 1)[0]
        mesh.write_text(f"{text}\n# soak {self.commits}\n")
        _git(self.work, "add", "-A")
        _git(self.work, "commit", "-q", "-m", f"soak {self.commits}")
        _git(self.work, "push", "-q", "origin", "HEAD")
        return _git(self.work, "rev-parse", "HEAD")

    def announce(self) -> None:
        _announce(self.hook_port, self.hook_secret)

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _extras_present(self, extra: int, kinds: tuple[str, ...] = ()) -> dict[str, int]:
        """How many of the `extra` Services' objects exist, by kind."""
        names = {f"extra{i}" for i in range(extra)}
        return {
            kind: sum(
                1
                for o in self.api.list(kind, namespace="c")
                if any(o["metadata"]["name"].startswith(n) for n in names)
            )
            for kind in kinds or ("ConfigMap", "Service", "NetworkPolicy")
        }

    def restart_apiserver_mid_apply(
        self, start: float, extra: int = 8, down_s: float = 5.0
    ) -> None:
        """Commit `extra` new Services, wait until the apply is under way (the first of their
        sidecar ConfigMaps exists: identities and the inventory are written, the other objects
        are being applied), SIGKILL the API server at once (a crash, not a graceful stop that
        would let the apply finish), start it again `down_s` later."""
        r = self.apiserver_restart
        head = self.commit(extra)
        self.announce()
        r["commit"], r["services_added"] = head, extra
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and not self._extras_present(extra, ("ConfigMap",))["ConfigMap"]
        ):
            time.sleep(0.002)
        r["apply_seen_at"] = round(time.time() - start, 2)
        proc = self.cp.procs.pop("kube-apiserver")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        r["killed_at"] = round(time.time() - start, 2)
        time.sleep(down_s)
        r["status_while_down"] = self.status().get("conditions")
        self.cp.start_apiserver()
        r["ready_again_at"] = round(time.time() - start, 1)
        self.api = self.cp.admin()
        # what of the new Services' objects the interrupted apply had written (of `extra` each),
        # read as soon as the API server is back: an upper bound, since the reconciler's retry
        # may already have written more (at least one ConfigMap was there at the kill)
        r["written_before_the_kill"] = self._extras_present(extra)

    def check(self, head: str) -> dict[str, Any]:
        """Converged: the head applied, nothing left to plan, every injected workload with its
        config and identity."""
        import dataclasses  # noqa: PLC0415

        from reconciler import compiler, intent  # noqa: PLC0415
        from reconciler.targets.kubernetes import KubernetesTarget  # noqa: PLC0415

        status = self.status()
        applied = status.get("lastAppliedRevision") or ""
        result: dict[str, Any] = {
            "last_applied_revision": applied,
            "head": head,
            "converged": bool(head) and applied.endswith(head),
            "final_conditions": status.get("conditions"),
        }
        if result["converged"]:
            snapshot = dataclasses.replace(intent.files.from_directory(self.work), revision=applied)
            target = KubernetesTarget(self.api, image=self.IMAGE)
            plan = target.plan(compiler.compile(intent.load(snapshot)), target.observe())
            result["plan_empty"] = plan.empty
            result["plan_changes"] = [str(c) for c in plan.changes][:20]
        broken = []
        for kind, ns, name, _, sa in self.kubeapps.WORKLOADS:
            live = self.api.get(kind, ns, name)
            if live is None or "initContainers" not in live["spec"]["template"]["spec"]:
                broken.append(f"{kind}/{ns}/{name}: not injected")
                continue
            service = live["metadata"]["annotations"]["weft.dev/injected-for"]
            if self.api.get("ConfigMap", ns, f"{service}-weft-sidecar") is None:
                broken.append(f"{kind}/{ns}/{name}: no sidecar ConfigMap")
            if self.api.get("Secret", ns, f"weft-identity-{sa}") is None:
                broken.append(f"{kind}/{ns}/{name}: no identity Secret")
        result["workloads_inconsistent"] = broken
        result["extra_services_objects_at_end"] = self._extras_present(
            self.apiserver_restart.get("services_added", 0)
        )
        return result

    def close(self) -> None:
        self.processes.stop([self.proc])
        self.cp.close()


def _announce(port: int, secret: str) -> bool:
    """POST the signed push webhook; a reconciler that is down or busy is not an error."""
    body = b'{"ref": "refs/heads/main"}'
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hook",
        data=body,
        headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 202)
    except OSError:
        return False


# ------------------------------------------------------------------ sampling and plots


def failure_causes(
    entries: list[dict[str, Any]], start: float, kill_window: tuple[float, float] | None
) -> dict[str, dict[str, int]]:
    """Sidecar A's non-2xx answers counted by cause (status and response flags), apart for the
    window of B's kill and for the rest of the run: what a failed request was, not only when."""
    causes: dict[str, dict[str, int]] = {"during_sidecar_kill": {}, "otherwise": {}}
    for entry in entries:
        at = int(entry.get("start_unix_ms", 0)) / 1000
        window = "otherwise"
        if kill_window and kill_window[0] <= at <= kill_window[1]:
            window = "during_sidecar_kill"
        cause = f"{entry.get('status')} {entry.get('response_flags') or '-'}"
        causes[window][cause] = causes[window].get(cause, 0) + 1
    return causes


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss_mib(pid: int) -> float:
    try:
        return host.memory_kib(pid).get("VmRSS", 0) / 1024
    except (OSError, KeyError, ValueError):
        return 0.0


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it (the reconciler's sidecars and apps)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def slope_per_minute(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return (
        0.0
        if var == 0
        else 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    )


def svg(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    unit: str,
    events: list[tuple[float, str]],
) -> str:
    """A line chart as SVG text, with the faults as labelled vertical lines; no plotting
    library needed."""
    w, h, left, bottom, top = 900, 320, 60, 40, 30
    xs = [x for s in series.values() for x, _ in s] or [0.0, 1.0]
    ys = [y for s in series.values() for _, y in s] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs) or 1.0
    y1 = max(ys) * 1.1 or 1.0

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * (w - left - 20)

    def py(y: float) -> float:
        return h - bottom - y / y1 * (h - bottom - top)

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 20}" y2="{h - bottom}" stroke="#000"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#000"/>',
        f'<text x="{left - 5}" y="{top + 4}" text-anchor="end">{y1:.1f}</text>',
        f'<text x="{left - 5}" y="{h - bottom}" text-anchor="end">0</text>',
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">seconds ({unit})</text>',
        f'<text x="{w - 20}" y="{h - bottom + 14}" text-anchor="end">{x1:.0f}</text>',
    ]
    for t, label in events:
        out.append(
            f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{h - bottom}" '
            'stroke="#bbb" stroke-dasharray="3,3"/>'
        )
        out.append(
            f'<text x="{px(t) + 2:.1f}" y="{top + 10}" fill="#777" font-size="9">{label}</text>'
        )
    for i, (name, points) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{path}"/>')
        out.append(f'<text x="{left + 10 + 150 * i}" y="{top + 24}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# ------------------------------------------------------------------ the run


_cleanup: list[Any] = []  # what `run` stops however `_run` ends (the Kubernetes control plane)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    processes = Processes(tmp)
    try:
        return _run(args, tmp, processes)
    finally:
        processes.stop()  # whatever happened: every process this run started, by pid
        while _cleanup:
            _cleanup.pop()()
        state = tmp / "control" / "state"
        if os.path.ismount(state):
            subprocess.run(["umount", "-l", str(state)], check=False)


def _run(args: argparse.Namespace, tmp: Path, processes: Processes) -> dict[str, Any]:
    backend_port = host.free_port()
    processes.start("backend", [sys.executable, __file__, "--backend", str(backend_port)], None)
    time.sleep(0.5)
    (tmp / "pair").mkdir()
    pair = Pair(tmp / "pair", processes, backend_port)
    control = ControlPlane(tmp / "control", processes, args.state_mib)
    kube = None
    if args.kube:
        kube = KubeHalf(tmp / "kube", processes, control.daemon, control.bare.parent)
        _cleanup.append(kube.cp.close)  # its processes are the harness's, not `processes`
    kube_pushed: list[str] = []
    load = Load(pair.a_port, args.rate)
    duration = args.minutes * 60
    start = time.time()
    events: list[tuple[float, str]] = []
    samples: list[dict[str, Any]] = []
    kill_window: tuple[float, float] | None = None
    kill_ejections = -1
    git_outage: dict[str, Any] = {}
    enospc: dict[str, Any] = {"note": control.enospc_note}
    pushed: list[str] = []

    def event(label: str) -> None:
        events.append((time.time() - start, label))
        print(f"soak: {time.time() - start:7.1f} s  {label}", flush=True)

    load.start()
    rollover_at, kill_at = 0.4 * duration, 0.7 * duration
    outage_at, disk_at = 0.25 * duration, 0.55 * duration
    kube_restart_at = 0.8 * duration
    next_reload = next_commit = 10.0
    next_rotate = 30.0
    rollover_step = 0
    outage_step = disk_step = 0
    killed = kube_restarted = False
    disk: contextlib.ExitStack | None = None
    try:
        while (elapsed := time.time() - start) < duration:
            if elapsed >= next_reload:
                pair.write_configs()
                next_reload += 10
            if elapsed >= next_rotate:
                pair.certs.write()
                next_rotate += 30
            if elapsed >= next_commit:
                try:
                    pushed.append(control.commit())
                    control.announce()
                except subprocess.CalledProcessError as e:
                    event(f"commit failed: {e.stderr.strip()[:60]}")
                if kube is not None:
                    try:
                        kube_pushed.append(kube.commit())
                        kube.announce()
                    except subprocess.CalledProcessError as e:
                        event(f"kube commit failed: {e.stderr.strip()[:60]}")
                next_commit += 10
            # not while the git server is away: the commit to interrupt could not be fetched
            if (
                kube is not None
                and not kube_restarted
                and elapsed >= kube_restart_at
                and outage_step != 1
            ):
                event("kube-apiserver stopped mid-apply")
                kube.restart_apiserver_mid_apply(start)
                kube_pushed.append(kube.apiserver_restart["commit"])
                event("kube-apiserver back")
                kube_restarted = True
            if kube is not None:
                kube.watch(start)
            if rollover_step == 0 and elapsed >= rollover_at:
                pair.certs.start_rollover()
                pair.certs.write()
                event("CA rollover: new root trusted")
                rollover_step = 1
            elif rollover_step == 1 and elapsed >= rollover_at + 30:
                pair.certs.issue_from_new()
                pair.certs.write()
                event("CA rollover: issuing from the new CA")
                rollover_step = 2
            elif rollover_step == 2 and elapsed >= rollover_at + 90:
                pair.certs.retire_old()
                pair.certs.write()
                event("CA rollover: old root retired")
                rollover_step = 3
            if not killed and elapsed >= kill_at:
                t0 = time.time()
                pair.kill("B")
                event("sidecar B SIGKILLed")
                time.sleep(2)
                pair.start("B")
                kill_window = (t0, time.time() + 1)
                # read now: a reload (every 10 s) may start A's outlier counts afresh
                kill_ejections = pair.ejections()
                event(f"sidecar B restarted and ready (A ejected an endpoint {kill_ejections}x)")
                killed = True
            if outage_step == 0 and elapsed >= outage_at:
                control.daemon.stop()
                git_outage["stopped_at"] = elapsed
                event("git server stopped")
                outage_step = 1
            elif outage_step == 1 and elapsed >= outage_at + 60:
                git_outage["stalled_during"] = control.status().get("conditions")
                control.daemon.start()
                git_outage["started_at"] = time.time() - start
                event("git server back")
                outage_step = 2
            if disk_step == 0 and elapsed >= disk_at:
                disk = contextlib.ExitStack()
                enospc.update(disk.enter_context(control.full_disk()))
                event("state disk full (ENOSPC)")
                disk_step = 1
            elif disk_step == 1 and elapsed >= disk_at + 45:
                enospc["status_during"] = control.status().get("conditions")
                assert disk is not None
                disk.close()
                disk = None
                event("state disk freed")
                disk_step = 2
            rec = control.proc.pid
            tree = descendants(rec)
            kube_pid = kube.proc.pid if kube is not None else 0
            samples.append(
                {
                    "t": round(elapsed, 1),
                    "ok": load.ok,
                    "failed": len(load.failures),
                    **{f"{side}_rss_mib": rss_mib(pair.procs[side].pid) for side in SIDES},
                    **{f"{side}_fds": fds(pair.procs[side].pid) for side in SIDES},
                    "reconciler_rss_mib": rss_mib(rec),
                    "reconciler_fds": fds(rec),
                    "reconciler_tree_procs": len(tree),
                    "kube_reconciler_rss_mib": rss_mib(kube_pid) if kube_pid else 0.0,
                    "kube_reconciler_fds": fds(kube_pid) if kube_pid else 0,
                }
            )
            time.sleep(max(0.0, 1 - (time.time() - start - elapsed)))
    finally:
        if disk is not None:
            disk.close()
        load.close()
    if outage_step == 1:  # a short run can end inside the outage: converging needs the server
        control.daemon.start()
        event("git server back (end of run)")
    # Converged: the reconciler applies the head within a few polls once nothing is failing.
    head = pushed[-1] if pushed else ""
    deadline = time.time() + 120
    control.announce()
    while time.time() < deadline:
        applied = control.status().get("lastAppliedRevision") or ""
        if head and applied.endswith(head):
            break
        time.sleep(1)
    final = control.status()
    half = control.half_written()
    counters = {side: pair.counters(side) for side in SIDES}
    kube_result: dict[str, Any] = {"skipped": "--no-kube"}
    if kube is not None:
        kube_head = kube_pushed[-1] if kube_pushed else ""
        kube.announce()
        deadline = time.time() + 120
        while time.time() < deadline:
            kube.watch(start)
            if kube_head and (kube.status().get("lastAppliedRevision") or "").endswith(kube_head):
                break
            time.sleep(1)
        kube_result = {
            **kube.check(kube_head),
            "commits_pushed": len(kube_pushed),
            "apiserver_restart": kube.apiserver_restart,
            "reconciler_restarts": kube.restarts,
        }
        kube.close()
    control.close()
    processes.stop()
    in_kill = [f for f in load.failures if kill_window and kill_window[0] <= f[0] <= kill_window[1]]
    other = [f for f in load.failures if f not in in_kill]
    causes = failure_causes(pair.not_ok("A"), start, kill_window)
    half_point = len(samples) // 2
    late = samples[half_point:]
    ts = [s["t"] for s in late]
    return {
        "date": _now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "minutes": args.minutes,
        "rate": args.rate,
        "requests_ok": load.ok,
        "requests_failed": len(load.failures),
        "failed_during_sidecar_kill": len(in_kill),
        "failed_during_sidecar_kill_kinds": sorted({k for _, k in in_kill}),
        "failed_otherwise": len(other),
        "failed_otherwise_kinds": sorted({k for _, k in other}),
        "failed_otherwise_at": [round(t - start, 1) for t, _ in other[:50]],
        "kill_window_seconds": round(kill_window[1] - kill_window[0], 1) if kill_window else None,
        "not_ok_at_A_by_cause": causes,
        "b_api_ejections_by_A_after_kill": kill_ejections,
        "config_reloads_written": pair.reloads,
        "cert_generations_written": pair.certs.generation,
        "sidecar_counters_at_end": counters,
        "commits_pushed": len(pushed),
        "webhooks_not_accepted": control.hooks_refused,
        "converged": bool(head) and (final.get("lastAppliedRevision") or "").endswith(head),
        "last_applied_revision": final.get("lastAppliedRevision"),
        "head": head,
        "final_conditions": final.get("conditions"),
        "git_outage": git_outage,
        "enospc": enospc,
        "half_written_files": half,
        "kubernetes": kube_result,
        "slopes_second_half_per_minute": {
            k: round(slope_per_minute(ts, [s[k] for s in late]), 4)
            for k in (
                *(f"{side}_rss_mib" for side in SIDES),
                *(f"{side}_fds" for side in SIDES),
                "reconciler_rss_mib",
                "reconciler_fds",
                "kube_reconciler_rss_mib",
                "kube_reconciler_fds",
            )
        },
        "events": [(round(t, 1), label) for t, label in events],
        "samples": samples,
    }


def plots(result: dict[str, Any]) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    samples = result["samples"]
    events = [(t, label.split(":")[0][:18]) for t, label in result["events"]]

    def series(*keys: str) -> dict[str, list[tuple[float, float]]]:
        return {k: [(s["t"], float(s[k])) for s in samples] for k in keys}

    rss = [*(f"{side}_rss_mib" for side in SIDES), "reconciler_rss_mib", "kube_reconciler_rss_mib"]
    fd = [*(f"{side}_fds" for side in SIDES), "reconciler_fds", "kube_reconciler_fds"]
    have = samples[0].keys() if samples else set()
    (PLOTS / "rss.svg").write_text(
        svg("RSS (MiB)", series(*[k for k in rss if k in have]), "MiB", events)
    )
    (PLOTS / "fds.svg").write_text(
        svg("open file descriptors", series(*[k for k in fd if k in have]), "fds", events)
    )
    errors = [(s["t"], float(s["failed"])) for s in samples]
    (PLOTS / "errors.svg").write_text(
        svg("failed requests (cumulative)", {"failed": errors}, "count", events)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--rate", type=int, default=200, help="requests per second through the pair")
    p.add_argument("--state-mib", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    p.add_argument(
        "--no-kube",
        dest="kube",
        action="store_false",
        help="without the Kubernetes half (no API server restart mid-apply)",
    )
    p.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.backend:
        backend_main(args.backend)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="weft-soak-"))
    try:
        result = run(args, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"soak: logs in {tmp}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    plots(result)
    summary = {k: v for k, v in result.items() if k not in ("samples", "events")}
    print(json.dumps(summary, indent=2))
    k = result["kubernetes"]
    kube_ok = "skipped" in k or (
        k["converged"] and k.get("plan_empty", False) and not k["workloads_inconsistent"]
    )
    ok = (
        result["failed_otherwise"] == 0
        and result["converged"]
        and not result["half_written_files"]
        and kube_ok
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
