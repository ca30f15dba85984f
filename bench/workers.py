"""Multi-worker scaling (issue 15): every proxy with one worker and with two, on this machine.

Each peer of bench/proxies.py (the standalone `fastpath-proxy`, the `weft sidecar`, Envoy,
HAProxy, nginx) runs as one proxy and as the mTLS sidecar pair, first with one worker (fastpath
`--workers 1`, Envoy `--concurrency 1`, HAProxy `nbthread 1`, nginx one worker process) pinned to
CPU 1, then with two (`--workers 2`, `--concurrency 2`, `nbthread 2`, a master and two worker
processes) allowed on both CPUs. The load generator (`weft-loadgen max`, closed loop, 16
keep-alive connections) and the backend (nginx) stay on CPU 0 throughout, so with two workers
the proxy shares that core with them: the machine has two cores, so two workers can never have
two to themselves. The figure that travels to a bigger machine is therefore **requests/s per
core the proxy used** (requests answered / the proxy processes' utime + stime over the window),
with the raw requests/s beside it; the scaling efficiency is two workers' requests/s per core
over one worker's (1.0: a second worker costs nothing in coordination).

A `direct` run (load generator -> backend) each round is the ceiling the load generator and
backend reach on their core. Rounds interleave (the order of peers rotates); a run during which
the hypervisor took more than `--max-steal` % of a core for other guests is repeated once.

    .venv/bin/python bench/workers.py [--runs 3] [--peers fastpath,weft,...]
        [--topologies proxy,pair] [--seconds 5] [--out FILE] [--from-json FILE]

Raw results: bench/results/workers.json; plot: docs/bench/workers.png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import proxies  # noqa: E402

RESULTS = REPO / "bench" / "results" / "workers.json"
PLOT = REPO / "docs" / "bench" / "workers.png"
PEERS = ("fastpath", "weft", "envoy", "haproxy", "nginx")
WORKERS = (1, 2)
BOTH_CPUS = "0,1"


def measure(ctx: proxies.Context, peer: str, topology: str, workers: int) -> dict[str, Any]:
    """One closed-loop maximum of `peer` with `workers` workers; its CPU over the window."""
    args = ctx.args
    ctx.workers = workers
    ctx.proxy_cpu = proxies.PROXY_CPU if workers == 1 else BOTH_CPUS
    run = proxies.start(ctx, peer, topology)  # direct: the backend's own port
    try:
        time.sleep(args.settle)
        argv = ["max", *proxies._common(run, args.seconds, 1.0)]
        argv += ["--connections", str(args.connections)]
        out = proxies.loadgen(ctx, run, argv)
    finally:
        proxies.stop(ctx, run)
    window = out["window"]
    cpu = sum(window["cpu_s"].values())
    cores = cpu / window["seconds"]
    return {
        "peer": peer,
        "topology": topology,
        "workers": workers,
        "ok_per_s": out["ok_per_s"],
        "failed": out["answered"] - out["ok"] + sum(out["errors"].values()),
        "proxy_cpu_s": round(cpu, 3),
        "proxy_cores": round(cores, 3),
        "per_core": round(out["ok_per_s"] / cores, 1) if cores > 0 else None,
        "latency_us": out["latency_us"],
        "window": window,
    }


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for topology in proxies.TOPOLOGIES:
        by: dict[str, Any] = {}
        for peer in ("direct", *PEERS):
            for workers in WORKERS:
                rows = [
                    r
                    for r in runs
                    if (r["topology"], r["peer"], r["workers"]) == (topology, peer, workers)
                ]
                if not rows:
                    continue
                s: dict[str, Any] = {
                    "runs": len(rows),
                    "ok_per_s": _stat([r["ok_per_s"] for r in rows]),
                    "steal_percent": _stat([r["window"]["steal_percent"] for r in rows]),
                    "failed": sum(r["failed"] for r in rows),
                }
                if peer != "direct":
                    s["proxy_cores"] = _stat([r["proxy_cores"] for r in rows])
                    s["per_core"] = _stat([r["per_core"] for r in rows if r["per_core"]])
                by[f"{peer}/{workers}"] = s
        for peer in PEERS:
            one, two = by.get(f"{peer}/1"), by.get(f"{peer}/2")
            if one and two:
                two["speedup"] = round(two["ok_per_s"]["median"] / one["ok_per_s"]["median"], 2)
                two["efficiency"] = round(two["per_core"]["median"] / one["per_core"]["median"], 2)
        if by:
            out[topology] = by
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for topology, rows in summary.items():
        lines += [
            f"**{topology}**",
            "",
            "| peer / workers | requests/s | proxy CPU, cores | requests/s per core "
            "| 2 workers / 1: requests/s | per core |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, s in rows.items():
            ok = s["ok_per_s"]
            rps = f"{ok['median']:,.0f} ({ok['min']:,.0f}\u2013{ok['max']:,.0f})"
            cores = f"{s['proxy_cores']['median']:.2f}" if "proxy_cores" in s else "\u2014"
            per = f"{s['per_core']['median']:,.0f}" if "per_core" in s else "\u2014"
            speed = f"{s['speedup']:.2f}\u00d7" if "speedup" in s else ""
            eff = f"{s['efficiency']:.2f}\u00d7" if "efficiency" in s else ""
            lines.append(f"| {name} | {rps} | {cores} | {per} | {speed} | {eff} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Requests/s per core, one and two workers side by side, per topology."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(summary), figsize=(7 * len(summary), 4.6), squeeze=False)
    for ax, (topology, rows) in zip(axes[0], summary.items(), strict=True):
        peers = [p for p in PEERS if f"{p}/1" in rows]
        for i, workers in enumerate(WORKERS):
            stats = [rows.get(f"{p}/{workers}", {}).get("per_core") for p in peers]
            xs = [j + (i - 0.5) * 0.38 for j in range(len(peers))]
            ys = [s["median"] if s else 0 for s in stats]
            err = [
                [y - s["min"] if s else 0 for y, s in zip(ys, stats, strict=True)],
                [s["max"] - y if s else 0 for y, s in zip(ys, stats, strict=True)],
            ]
            ax.bar(xs, ys, 0.38, yerr=err, capsize=3, label=f"{workers} worker(s)")
        ax.set_xticks(range(len(peers)), peers)
        ax.set_title(f"{topology}: requests/s per core the proxy used")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--topologies", default=",".join(proxies.TOPOLOGIES))
    p.add_argument("--seconds", type=float, default=5.0, help="measured window of each maximum")
    p.add_argument("--settle", type=float, default=0.5)
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    p.add_argument("--max-steal", type=float, default=10.0, help="repeat a run above this")
    p.add_argument("--nice", type=int, default=-10, help="niceness of everything measured")
    p.add_argument("--no-install", dest="install", action="store_false")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=PLOT)
    p.add_argument("--from-json", type=Path, help="only summarise and plot an earlier run")
    p.add_argument("--keep", action="store_true", help="keep configs, certs and logs")
    args = p.parse_args()
    args.peers = [x for x in args.peers.split(",") if x]
    args.topologies = [x for x in args.topologies.split(",") if x]
    if set(args.peers) - set(PEERS) or set(args.topologies) - set(proxies.TOPOLOGIES):
        p.error(f"peers are {PEERS}, topologies {proxies.TOPOLOGIES}")
    return args


def report(result: dict[str, Any], plot_path: Path) -> None:
    result["summary"] = summarise(result["runs"])
    print()
    print(markdown(result["summary"]))
    if result["summary"]:
        print(f"plot: {plot(result['summary'], plot_path)}")


def main() -> int:
    args = parse_args()
    if args.from_json:
        saved: dict[str, Any] = json.loads(args.from_json.read_text())
        report(saved, args.plot)
        args.from_json.write_text(json.dumps(saved, indent=2) + "\n")
        return 0
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("two workers need two CPUs")
    tools = proxies.ensure_tools(args.install)
    if os.geteuid() == 0 and args.nice != os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with proxies.workspace(args.keep) as tmp:
        ctx = proxies.new_context(args, tools, tmp, pin=True)
        os.sched_setaffinity(0, {proxies.CLIENT_CPU})
        (tmp / "files").mkdir()
        result: dict[str, Any] = {
            **proxies.run_header("workers", proxies.versions(tools), args),
            "pinned": {"loadgen_and_backend": proxies.CLIENT_CPU, "one_worker": 1, "two": "0,1"},
            "runs": [],
            "repeated_runs": [],
        }
        try:
            proxies.start_backend(ctx, tmp / "files")
            for n in range(args.runs):
                order = args.peers[n % len(args.peers) :] + args.peers[: n % len(args.peers)]
                for topology in args.topologies:
                    plan = [("direct", 1)] if topology == "proxy" else []
                    plan += [(peer, w) for peer in order for w in WORKERS]
                    for peer, workers in plan:
                        row = measure(ctx, peer, topology, workers)
                        if row["window"]["steal_percent"] > args.max_steal:
                            result["repeated_runs"].append(row)
                            row = measure(ctx, peer, topology, workers)
                        row["round"] = n
                        result["runs"].append(row)
                        per = f", {row['per_core']:,.0f}/core" if row.get("per_core") else ""
                        print(
                            f"   round {n + 1} {topology} {peer}/{workers}: "
                            f"{row['ok_per_s']:,.0f} requests/s{per} "
                            f"(steal {row['window']['steal_percent']:.0f} %)",
                            flush=True,
                        )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
        finally:
            ctx.processes.stop()
    report(result, args.plot)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
