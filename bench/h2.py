"""HTTP/2 and gRPC through the sidecar pair: Weft against Envoy, side by side (issue 15).

    h2load | ghz -> proxy A (h2c, prior knowledge) -> h2 over mTLS (TLS 1.3, ALPN h2)
                 -> proxy B -> backend (h2c: nginx for HTTP/2, a grpc-go server for gRPC)

b/api's port is declared `protocol: http2` (HTTP/2) or `protocol: grpc` (gRPC), so Weft's
sidecars speak h2 to each other and h2c to the app; Envoy is configured the same way (codec
AUTO downstream, HTTP/2 upstream on both hops, ALPN h2 between A and B). Same certificates and
pinning as `bench/proxies.py`: the client and the backend on CPU 0, every proxy on CPU 1, one
worker each, every request access-logged. The gRPC call is `grpc.health.v1.Health/Check`, which
ghz finds by server reflection through the pair; ghz and the backend are built by
tools/grpcbench.

Per protocol, peer and round (rounds interleaved, peer order rotating, fresh proxies each):

- **maximum throughput**: h2load 4 connections x 8 concurrent streams, or ghz 32 workers over
  4 connections, for `--seconds`;
- **latency at a rate**: 16 connections with one request in flight each, at 1,000/s and at half
  the slowest peer's maximum. Both clients time a request from when it was *sent*, not when it
  was due, so a stall hides the requests it delayed (coordinated omission): read these as the
  proxies' latency under steady load, not as an open-loop tail;
- **CPU per request** at 1,000/s: utime + stime of A and B over the run, per request done, and
  the hypervisor's steal over the same run. A run whose steal tops `--max-steal` (% of one
  core) is kept in `discarded_runs` and repeated once the host is quieter (up to `--retries`).

*direct* is the client against the backend itself. Added latency is a peer's percentile minus
direct's in the same round.

    .venv/bin/python bench/h2.py [--runs 3] [--seconds 8] [--protocols h2,grpc]
        [--peers direct,weft,fastpath,envoy]

Raw results: `bench/results/h2.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import proxies  # noqa: E402
from peers import envoy, host, nginx, weft  # noqa: E402

RESULTS = REPO / "bench" / "results" / "h2.json"
PEERS = ("direct", "weft", "fastpath", "envoy")
PROTOCOLS = ("h2", "grpc")


def intent(protocol: str) -> dict[str, str]:
    """The benchmarks' two-service intent with b/api's port declared `http2` or `grpc`."""
    declared = {"h2": "http2", "grpc": "grpc"}[protocol]
    return {
        "mesh.yaml": weft.INTENT["mesh.yaml"],
        "services.yaml": weft.INTENT["services.yaml"].replace(
            "name: api, namespace: b}\nspec: {ports: [{name: http, port: 8080}]}",
            "name: api, namespace: b}\nspec: {ports: [{name: http, port: 8080, protocol: "
            f"{declared}}}]}}",
        ),
    }


URL_PATH = "/"
GRPC_CALL = "grpc.health.v1.Health/Check"


def backend(root: Path, port: int) -> Path:
    """nginx answering h2c (prior knowledge) with the benchmark's small body."""
    conf = nginx._main(
        root,
        f"""\
        access_log off;
        http2_max_requests 10000000;
        server {{
            listen 127.0.0.1:{port} http2 reuseport backlog=4096;
            location = / {{ return 200 "{proxies.BODY.strip()}\\n"; }}
        }}
        """,
    )
    return nginx._write(root, conf)


def _h2(cluster: dict[str, Any]) -> dict[str, Any]:
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return cluster


def envoy_a(admin: int, port: int, upstream: int, certs: Path) -> dict[str, Any]:
    config = envoy.envoy_a(admin, port, upstream, certs)
    for cluster in config["static_resources"]["clusters"]:
        _h2(cluster)
        tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        tls["alpn_protocols"] = ["h2"]
    return config


def envoy_b(admin: int, port: int, app: int, certs: Path) -> dict[str, Any]:
    config = envoy.envoy_b(admin, port, app, certs)
    for cluster in config["static_resources"]["clusters"]:
        _h2(cluster)  # h2c to the app
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            ctx = chain["transport_socket"]["typed_config"]["common_tls_context"]
            ctx["alpn_protocols"] = ["h2"]
    return config


def start(ctx: proxies.Context, peer: str) -> proxies.Running:
    root = ctx.tmp / "run" / peer
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run = proxies.Running(port=ctx.backend_port)
    if peer in ("weft", "fastpath"):
        run.port, b_port = host.free_port(), host.free_port()
        proxies._weft(ctx, run, proxies.Side(peer, root, "B", b_port, ctx.backend_port))
        proxies._weft(ctx, run, proxies.Side(peer, root, "A", run.port, b_port))
    elif peer == "envoy":
        run.port, b_port = host.free_port(), host.free_port()
        for side, config in (
            ("B", envoy_b(host.free_port(), b_port, ctx.backend_port, ctx.certs["api"])),
            ("A", envoy_a(host.free_port(), run.port, b_port, ctx.certs["web"])),
        ):
            path = root / f"envoy-{side}.json"
            path.write_text(json.dumps(config, indent=2))
            proxies._launch(ctx, run, peer, side, envoy.argv(ctx.tools.envoy, path))
    deadline = time.monotonic() + 30
    while True:
        probe = load(ctx, run, "probe", check=False)
        if probe.get("succeeded") == 1:
            return run
        if time.monotonic() > deadline or any(p.poll() is not None for p in run.procs):
            raise RuntimeError(f"{peer}: no {ctx.args.protocol} answer through the pair: {probe}")
        time.sleep(0.2)


def h2load(
    ctx: proxies.Context,
    run: proxies.Running,
    args: list[str],
    log: Path | None = None,
    check: bool = True,
) -> dict[str, Any]:
    argv = ["h2load", *args, "--header", f":authority: {proxies.HOST}"]
    if log is not None:
        argv += ["--log-file", str(log)]
    argv.append(f"http://127.0.0.1:{run.port}{URL_PATH}")
    done = subprocess.run(
        host.pinned(ctx.client_cpu, argv), check=False, capture_output=True, text=True, timeout=120
    )
    out: dict[str, Any] = {"argv": argv[:-1], **host.h2load_summary(done.stdout)}
    if check and (done.returncode != 0 or out.get("succeeded", 0) == 0):
        raise RuntimeError(f"h2load failed: {done.stdout[-800:]} {done.stderr[-800:]}")
    return out


def ghz(
    ctx: proxies.Context, run: proxies.Running, args: list[str], check: bool = True
) -> dict[str, Any]:
    """One ghz run of unary health checks, found by server reflection through the pair."""
    argv = [
        str(ctx.args.ghz),
        *("--insecure", "--call", GRPC_CALL, "--authority", proxies.HOST, "--format", "json"),
        *args,
        f"127.0.0.1:{run.port}",
    ]
    done = subprocess.run(
        host.pinned(ctx.client_cpu, argv), check=False, capture_output=True, text=True, timeout=120
    )
    out: dict[str, Any] = {"argv": argv[:-1]}
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {}
    codes = report.get("statusCodeDistribution") or {}
    out["done"] = int(report.get("count", 0))
    out["succeeded"] = int(codes.get("OK", 0))
    out["req_per_s"] = float(report.get("rps", 0.0))
    percent = {
        int(d["percentage"]): d["latency"] / 1000 for d in report.get("latencyDistribution") or []
    }
    if percent:
        out["latency_us"] = {
            "count": out["succeeded"],
            "p50": percent.get(50, 0.0),
            "p90": percent.get(90, 0.0),
            "p99": percent.get(99, 0.0),
            "max": float(report.get("slowest", 0)) / 1000,
        }
    # A duration-bound run ends the calls still in flight when time is up (at most one per
    # worker): ghz reports them Canceled ("the client connection is closing") or Unavailable
    # ("transport is closing"). Those are not failures; anything else, or more of them, is.
    workers = int(args[args.index("-c") + 1]) if "-c" in args else 1
    ended = {"Canceled", "Unavailable"}
    failed = {k: v for k, v in codes.items() if k != "OK" and k not in ended}
    out["ended_at_stop"] = sum(v for k, v in codes.items() if k in ended)
    if check and (out["succeeded"] == 0 or failed or out["ended_at_stop"] > workers):
        raise RuntimeError(f"ghz failed: {codes} {done.stderr[-800:]}")
    out["done"] = out["succeeded"]
    return out


def load(
    ctx: proxies.Context,
    run: proxies.Running,
    kind: str,
    rate: float = 0.0,
    check: bool = True,
) -> dict[str, Any]:
    """One load of `kind` (probe, warm, rate, max) in the run's protocol: h2load for HTTP/2,
    ghz for gRPC. Both keep 16 connections with one request each at a rate, and 32 requests in
    flight over 4 connections at the maximum."""
    seconds = f"{ctx.args.seconds:g}s"
    if ctx.args.protocol == "grpc":
        flags = {
            "probe": ["-n", "1", "-c", "1"],
            "warm": ["-c", "32", "--connections", "4", "-z", "1s"],
            "rate": ["-c", "16", "--connections", "16", "--rps", f"{rate:g}", "-z", seconds],
            "max": ["-c", "32", "--connections", "4", "-z", seconds],
        }[kind]
        return ghz(ctx, run, flags, check=check)
    flags = {
        "probe": ["-n", "1", "-c", "1"],
        "warm": ["-c", "4", "-m", "8", "-D", "1"],
        "rate": ["-c", "16", "-m", "1", "--rps", f"{rate / 16:g}", "-D", seconds[:-1]],
        "max": ["-c", "4", "-m", "8", "-D", seconds[:-1]],
    }[kind]
    if kind != "rate":
        return h2load(ctx, run, flags, check=check)
    log = ctx.tmp / f"h2load-{rate:g}.log"
    try:
        found = h2load(ctx, run, flags, log, check=check)
        found["latency_us"] = latency(log)
    finally:
        log.unlink(missing_ok=True)
    return found


def latency(log: Path) -> dict[str, float]:
    """Percentiles (µs) of h2load's per-request times (third column), successes only."""
    times = sorted(
        int(cols[2])
        for line in log.read_text().splitlines()
        if len(cols := line.split("\t")) >= 3 and cols[1] == "200"
    )
    if not times:
        return {}

    def at(q: float) -> float:
        return float(times[min(len(times) - 1, int(q * len(times)))])

    return {"count": len(times), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)}


def cpu(run: proxies.Running) -> float:
    return sum(host.cpu_seconds(pid) for pid in run.pids.values())


def measure(ctx: proxies.Context, peer: str, rates: list[float]) -> dict[str, Any]:
    run = start(ctx, peer)
    result: dict[str, Any] = {"peer": peer, "protocol": ctx.args.protocol, "rate": {}}
    try:
        load(ctx, run, "warm")  # pools, caches
        for rate in rates:
            before, stolen, t0 = cpu(run), host.steal_seconds(), time.monotonic()
            r = load(ctx, run, "rate", rate)
            spent = cpu(run) - before
            r["cpu_us_per_request"] = spent * 1e6 / max(1, r.get("done", 0)) if run.pids else None
            # what the hypervisor took for other guests meanwhile, in % of one core
            r["steal_percent"] = round(
                (host.steal_seconds() - stolen) / (time.monotonic() - t0) * 100, 1
            )
            result["rate"][f"{rate:g}"] = r
        result["max"] = load(ctx, run, "max")
        result["rss_kib"] = {side: host.memory_kib(pid) for side, pid in run.pids.items()}
    finally:
        proxies.stop(ctx, run)
    return result


def steal(run: dict[str, Any]) -> float:
    """The most CPU the hypervisor took in any latency window of a run (% of one core)."""
    return float(max(x["steal_percent"] for x in run["rate"].values()))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[dict[str, Any]], rates: list[float]) -> dict[str, Any]:
    by_peer: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_peer.setdefault(r["peer"], []).append(r)
    direct = {r["round"]: r for r in by_peer.get("direct", [])}
    summary: dict[str, Any] = {}
    for peer, rs in by_peer.items():
        s: dict[str, Any] = {"max_rps": _median([r["max"]["req_per_s"] for r in rs])}
        for rate in rates:
            key = f"{rate:g}"
            s[key] = {
                "p50": _median([r["rate"][key]["latency_us"]["p50"] for r in rs]),
                "p99": _median([r["rate"][key]["latency_us"]["p99"] for r in rs]),
                "added_p99": _median(
                    [
                        r["rate"][key]["latency_us"]["p99"]
                        - direct[r["round"]]["rate"][key]["latency_us"]["p99"]
                        for r in rs
                        if r["round"] in direct
                    ]
                ),
                "cpu_us_per_request": _median(
                    [
                        r["rate"][key]["cpu_us_per_request"]
                        for r in rs
                        if r["rate"][key]["cpu_us_per_request"] is not None
                    ]
                ),
            }
        summary[peer] = s
    return summary


def markdown(summary: dict[str, Any], rates: list[float]) -> str:
    low, high = (f"{r:g}" for r in rates)
    envoy_s = summary.get("envoy")
    x = "\u00d7"  # the multiplication sign, as docs/benchmarks.md writes ratios
    lines = [
        f"| | max req/s | {x} Envoy | added p99 at {low}/s µs | {x} Envoy "
        f"| added p99 at {high}/s µs | {x} Envoy | CPU µs/req at {low}/s | {x} Envoy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(v: float, e: float | None) -> str:
        return f"{v / e:.2f}" if e else "—"

    for peer, s in summary.items():
        e = envoy_s
        if peer == "direct":  # the baseline: nothing is added, and no proxy spends CPU
            lines.append(
                f"| direct | {s['max_rps']:,.0f} | {ratio(s['max_rps'], e and e['max_rps'])} "
                "| — | — | — | — | — | — |"
            )
            continue
        lines.append(
            f"| {peer} | {s['max_rps']:,.0f} | {ratio(s['max_rps'], e and e['max_rps'])} "
            f"| {s[low]['added_p99']:,.0f} "
            f"| {ratio(s[low]['added_p99'], e and e[low]['added_p99'])} "
            f"| {s[high]['added_p99']:,.0f} "
            f"| {ratio(s[high]['added_p99'], e and e[high]['added_p99'])} "
            f"| {s[low]['cpu_us_per_request']:.1f} "
            f"| {ratio(s[low]['cpu_us_per_request'], e and e[low]['cpu_us_per_request'])} |"
        )
    return "\n".join(lines)


def grpc_tools() -> tuple[Path, Path]:
    """ghz and the gRPC health server, built by tools/grpcbench (cached)."""
    out = subprocess.run(
        [str(REPO / "tools" / "grpcbench" / "build.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.split()
    return Path(out[0]), Path(out[1])


def start_backend(ctx: proxies.Context, protocol: str, root: Path) -> subprocess.Popen[bytes]:
    if protocol == "grpc":
        argv = [str(ctx.args.grpc_server), "--listen", f"127.0.0.1:{ctx.backend_port}"]
        return ctx.processes.start("grpc-backend", argv, ctx.client_cpu)
    conf = backend(root, ctx.backend_port)
    return ctx.processes.start(
        "h2-backend", [ctx.tools.nginx, "-p", str(root), "-c", str(conf)], ctx.client_cpu
    )


def one_protocol(
    args: argparse.Namespace, tools: proxies.Tools, tmp: Path, protocol: str, peers: list[str]
) -> dict[str, Any]:
    """Calibration and every round of one protocol, on a backend and configs of its own."""
    args.protocol = protocol
    ctx = proxies.new_context(args, tools, tmp, args.pin, intent(protocol))
    declared = ctx.configs[("b", "api")]["inbound"][0]["protocol"]
    assert declared == {"h2": "http2", "grpc": "grpc"}[protocol], declared
    out: dict[str, Any] = {"runs": [], "discarded_runs": []}
    try:
        ctx.backend_pid = start_backend(ctx, protocol, tmp / "backend").pid
        calibration = {}
        for peer in [p for p in peers if p != "direct"]:
            run = start(ctx, peer)
            try:
                calibration[peer] = load(ctx, run, "max")["req_per_s"]
            finally:
                proxies.stop(ctx, run)
            print(
                f"   calibrate {protocol} {peer}: {calibration[peer]:,.0f} requests/s", flush=True
            )
        rates = [args.rate, round(min(calibration.values()) / 2 / 100) * 100]
        out["calibration"], out["rates"] = calibration, rates
        for n in range(args.runs):
            order = peers[n % len(peers) :] + peers[: n % len(peers)]
            for peer in order:
                print(f"== round {n + 1}/{args.runs}: {protocol} {peer}", flush=True)
                r = measure(ctx, peer, rates)
                for _ in range(args.retries):
                    if steal(r) <= args.max_steal:
                        break
                    print(f"   steal {steal(r):.0f} % > {args.max_steal:g} %: again", flush=True)
                    out["discarded_runs"].append({**r, "round": n})
                    host.wait_for_low_steal(args.max_steal, args.retry_wait)
                    r = measure(ctx, peer, rates)
                r["round"] = n
                out["runs"].append(r)
                print(
                    f"   max {r['max']['req_per_s']:,.0f}/s; "
                    + ", ".join(
                        f"{k}/s p99 {v['latency_us'].get('p99', 0):,.0f} µs"
                        for k, v in r["rate"].items()
                    ),
                    flush=True,
                )
        out["summary"] = summarise(out["runs"], rates)
        out["markdown"] = markdown(out["summary"], rates)
        print(out["markdown"], flush=True)
    finally:
        ctx.processes.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--max-steal",
        type=float,
        default=10.0,
        help="a run whose latency windows lost more than this (%% of one core) to other guests "
        "(`steal` in /proc/stat) is discarded and repeated",
    )
    parser.add_argument("--retries", type=int, default=2, help="repeats of a discarded run")
    parser.add_argument("--retry-wait", type=float, default=120.0, help="seconds to wait for quiet")
    parser.add_argument("--no-install", dest="install", action="store_false")
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    protocols = [p for p in args.protocols.split(",") if p]
    tools = proxies.ensure_tools(args.install)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: `make bench` installs nghttp2-client")
    args.ghz, args.grpc_server = grpc_tools() if "grpc" in protocols else (None, None)
    if os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    args.pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if args.pin:
        os.sched_setaffinity(0, {proxies.CLIENT_CPU})
    versions = {**proxies.versions(tools), "h2load": host.command_output(["h2load", "--version"])}
    if args.ghz is not None:
        versions["ghz"] = host.command_output([str(args.ghz), "--version"])
    result: dict[str, Any] = {**proxies.run_header("h2", versions, args), "protocols": {}}
    try:
        for protocol in protocols:
            with tempfile.TemporaryDirectory(prefix=f"weft-{protocol}-") as tmp:
                result["protocols"][protocol] = one_protocol(
                    args, tools, Path(tmp), protocol, peers
                )
    finally:
        result["settings"]["protocol"] = None
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"raw results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
