"""User-space instructions per proxied request, one proxy, counted by valgrind (issue 15).

This VM has no hardware counters (`perf stat -e instructions` is not supported) and its
throughput from one run to the next varies by ±40 % with the hypervisor's other guests, so a
change of a few percent in fastpath's own work cannot be told from timings. Instructions can:
each peer runs as `bench/proxies.py`'s one proxy under `valgrind --tool=cachegrind`, carrying a
fixed-rate load for a short and a long window, and its instructions per request are the
difference of the two runs' totals over the difference of their requests (start-up, reading
configs and keys, cancels out). Repeated runs agree to within 0.1 %.

What it counts: every instruction the proxy's processes run in user space (the proxy, libc, its
allocator, its TLS library), on the same requests as `proxies.py` sends. What it does not: the
kernel's share (the loopback TCP path, most of a request's cost, and the same for every peer).

    .venv/bin/python bench/instructions.py [--peers fastpath,nginx,haproxy]
        [--baseline OLD/fastpath-proxy] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import proxies
from peers import host

PEERS = ("fastpath", "nginx", "haproxy")


class Counted(host.Processes):
    """Starts every process but the backend under cachegrind, one output file per process."""

    def start(self, name: str, argv: list[str], cpu: int | str | None) -> subprocess.Popen[bytes]:
        if name != "backend":
            out = self.logs / f"cachegrind.{name}.%p"
            argv = [
                *("valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes"),
                f"--cachegrind-out-file={out}",
                *argv,
            ]
        return super().start(name, argv, cpu)


def instructions(logs: Path, name: str) -> int:
    """The summed `Ir` of every process `name` ran (nginx's master and worker, say)."""
    total = 0
    for f in logs.glob(f"cachegrind.{name}.*"):
        for line in f.read_text().splitlines():
            if line.startswith("summary:"):
                total += int(line.split()[1])
        f.unlink()
    return total


def one_run(ctx: proxies.Context, peer: str, seconds: float, rate: float) -> tuple[int, int]:
    """(instructions, requests answered) for one life of `peer` carrying `seconds` of load."""
    run = proxies.start(ctx, peer, "proxy")
    try:
        argv = ["rate", *proxies._common(run, seconds, 0), "--rate", f"{rate:g}"]
        argv += ["--connections", str(ctx.args.connections)]
        result = proxies.loadgen(ctx, run, argv)
    finally:
        # nginx writes its counts when its worker exits gracefully (SIGQUIT), not on SIGTERM.
        if peer == "nginx":
            for proc in run.procs:
                proc.send_signal(signal.SIGQUIT)
            for proc in run.procs:
                proc.wait(timeout=60)
        proxies.stop(ctx, run)
    if result["errors"]:
        raise RuntimeError(f"{peer}: errors under load: {result['errors']}")
    # The readiness checks proxies.start sends are the same in both runs, so they cancel.
    return instructions(ctx.tmp, f"{peer}-P"), int(result["ok"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--rate", type=float, default=250, help="requests/s (valgrind is slow)")
    p.add_argument("--short", type=float, default=4, help="seconds of load in the short run")
    p.add_argument("--long", type=float, default=12, help="seconds of load in the long run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument(
        "--baseline",
        type=Path,
        help="another fastpath-proxy binary (an earlier commit's), counted as fastpath-baseline",
    )
    p.add_argument("--out", type=Path, default=proxies.REPO / "bench/results/instructions.json")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    tools = proxies.ensure_tools(install=True)
    out: dict[str, Any] = {
        **proxies.run_header("instructions", proxies.versions(tools), args),
        "valgrind": host.command_output(["valgrind", "--version"]),
        "peers": {},
    }
    with tempfile.TemporaryDirectory(prefix="weft-instructions-") as tmp:
        ctx = proxies.new_context(args, tools, Path(tmp), pin=True)
        ctx.processes = Counted(Path(tmp))
        try:
            (Path(tmp) / "files").mkdir()
            proxies.start_backend(ctx, Path(tmp) / "files")
            named = [(peer, peer, tools) for peer in args.peers.split(",")]
            if args.baseline is not None:
                old = dataclasses.replace(tools, fastpath=args.baseline.resolve())
                named.append(("fastpath-baseline", "fastpath", old))
            for name, peer, peer_tools in named:
                ctx.tools = peer_tools
                i1, n1 = one_run(ctx, peer, args.short, args.rate)
                i2, n2 = one_run(ctx, peer, args.long, args.rate)
                per = (i2 - i1) / (n2 - n1)
                out["peers"][name] = {"runs": [[i1, n1], [i2, n2]], "per_request": round(per)}
                print(f"{name}: {per:,.0f} instructions per request", flush=True)
        finally:
            ctx.processes.stop()
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
