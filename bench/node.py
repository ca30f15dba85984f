"""The real node (issue 13): how long the single-node cluster of the node tests takes to start,
and the latency two injected sidecars add between pods on it.

**Start.** Each start is a cluster from nothing, built binaries and images cached (run
`make test-node` once first, which builds them): a fresh etcd, API server and controller
manager, containerd with an empty content store (the images are imported), a new kubelet and
scheduler and kube-network-policies (tests/node.py). Timed from the first process started to:
- `node_ready_s`: the Node's Ready condition is True;
- `converged_s`: deploy/ applied, both reconciler pods Ready and the reconciler's status names
  the repository's head (tests/nodemesh.py's `deploy`, the template's workloads applied too);
- `mesh_ready_s`: every running workload's pods replaced by injected ones, all Ready.
The first start of the run is `cold`: the kernel's page cache is dropped first (`sync`, then
`echo 3 > /proc/sys/vm/drop_caches`), so every binary, image and library is read from disk, as
after a reboot. The others are `warm`: the page cache holds what the start before read. Builds
are not in either: they are cached once per machine (the build times are in docs/operations.md).

**Pod to pod.** In the last cluster, a weft-loadgen open-loop load (constant rate, latency from
each request's scheduled send time, keep-alive connections) runs in a client pod's network
namespace, as root, so it is what an app in that pod would send:
- `direct`: an unmeshed client pod to an unmeshed `weft demo-app` pod, both in namespace
  `bench` (which no intent names), by pod address: the baseline;
- `mesh`: in a/web's pod to b/api's ClusterIP: capture hands each connection to a/web's
  sidecar, which carries it over mTLS to a b/api pod whose sidecar delivers it to the same
  demo app. Both sidecars are the injected ones, with every feature on (authorization,
  metrics, access log, tracing as configured).
Rounds alternate the two; medians are over rounds. The apps are Python (`weft demo-app`), so
the direct figures are mostly theirs; the added latency is mesh minus direct.

    .venv/bin/python bench/node.py [--starts 2] [--rounds 3] [--rate 200] [--seconds 20]
        [--warmup 5] [--connections 4]

Raw results go to bench/results/node.json. Needs root (containerd, a kubelet).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.peers import host  # noqa: E402
from tests import kubeapps, nodemesh  # noqa: E402
from tests import node as nodes  # noqa: E402

RESULTS = REPO / "bench" / "results" / "node.json"
BENCH_NS = "bench"
PLAIN_PORTS = json.dumps({"http": {"addr": "0.0.0.0:8080", "protocol": "http"}})


def loadgen() -> Path:
    subprocess.run(["cargo", "build", "--release", "-p", "weft-loadgen"], check=True, cwd=REPO)
    return REPO / "target" / "release" / "weft-loadgen"


@contextlib.contextmanager
def started(tmp: Path) -> Iterator[tuple[nodes.Node, nodemesh.Deployed, dict[str, float]]]:
    """A cluster from nothing to a ready mesh, with how long each stage took."""
    t0 = time.monotonic()
    with nodes.running_node() as node:
        times = {"node_ready_s": time.monotonic() - t0}
        with nodemesh.deploy(node, tmp) as deployed:
            times["converged_s"] = time.monotonic() - t0
            nodemesh.wait_meshed(node)
            times["mesh_ready_s"] = time.monotonic() - t0
            yield node, deployed, {k: round(v, 1) for k, v in times.items()}


def plain_pair(node: nodes.Node) -> tuple[str, str]:
    """An unmeshed client and server in a namespace no intent names: (client's network
    namespace, server's address:port)."""
    api = node.cp.admin()
    kubeapps.create_namespace(api, BENCH_NS)
    api.request(
        "POST",
        f"/api/v1/namespaces/{BENCH_NS}/serviceaccounts",
        body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench"}},
    )
    for name in ("client", "server"):
        obj = kubeapps.workload("Deployment", BENCH_NS, name, {"app": name}, "bench")
        obj["spec"]["template"]["spec"]["containers"][0].update(
            image=nodes.RELEASED_IMAGE,
            command=["weft", "demo-app"],
            env=[
                {"name": "WEFT_SERVICE", "value": f"{BENCH_NS}/{name}"},
                # Reached from other pods, not through a sidecar on loopback.
                {"name": "WEFT_PORTS", "value": PLAIN_PORTS},
            ],
            readinessProbe={"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 2},
        )
        api.apply(obj, manager="bench")
    found: dict[str, dict[str, Any]] = {}

    def ready() -> bool:
        for name in ("client", "server"):
            pods = nodemesh.live_pods(node, BENCH_NS, f"app={name}")
            if len(pods) != 1 or not nodemesh.ready(pods[0]):
                return False
            found[name] = pods[0]
        return True

    nodemesh.wait("the unmeshed pair Ready", ready, node, (BENCH_NS,), 120)
    client = nodemesh.netns_of(found["client"]["status"]["podIP"])
    return client, f"{found['server']['status']['podIP']}:8080"


def mesh_pair(node: nodes.Node) -> tuple[str, str]:
    """a/web's network namespace and b/api's ClusterIP:port."""
    web = nodemesh.meshed_pod(node, "a", "web")
    service = node.cp.admin().get("Service", "b", "api")
    assert service is not None
    return nodemesh.netns_of(web["status"]["podIP"]), f"{service['spec']['clusterIP']}:8080"


def run_load(
    tool: Path, netns: str, target: str, hostname: str, args: argparse.Namespace
) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, str(tool), "rate", "--target", target,
         "--host", hostname, "--path", "/hello", "--rate", str(args.rate),
         "--connections", str(args.connections), "--duration", str(args.seconds),
         "--warmup", str(args.warmup)],
        capture_output=True, text=True, timeout=args.seconds + args.warmup + 120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"weft-loadgen failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/node.py runs containerd and a kubelet: run it as root", file=sys.stderr)
        return 2
    tool = loadgen()
    load_before = host.loadavg()
    starts: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="weft-bench-node-") as tmp:
        for i in range(args.starts):
            last = i == args.starts - 1
            folder = Path(tmp) / f"start-{i}"
            folder.mkdir()
            if i == 0:
                subprocess.run(["sync"], check=True)
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            with started(folder) as (node, _, times):
                starts.append({"kind": "cold" if i == 0 else "warm", **times})
                print(f"start {i}: {times}", file=sys.stderr)
                if not last:
                    continue
                scenarios = {
                    "direct": (*plain_pair(node), f"server.{BENCH_NS}:8080"),
                    "mesh": (*mesh_pair(node), "api.b.svc.cluster.local:8080"),
                }
                for r in range(args.rounds):
                    order = list(scenarios) if r % 2 == 0 else list(reversed(scenarios))
                    for name in order:
                        netns, target, hostname = scenarios[name]
                        result = run_load(tool, netns, target, hostname, args)
                        lat = result["latency_us"]
                        print(
                            f"round {r} {name}: p50 {lat.get('p50')} p99 {lat.get('p99')} us, "
                            f"ok {result['ok']}, errors {result['errors']}",
                            file=sys.stderr,
                        )
                        runs.append({"round": r, "scenario": name, **result})
    summary = summarize(runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": host.machine(),
                "loadavg_before": load_before,
                "settings": vars(args),
                "starts": starts,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(json.dumps({"starts": starts, "summary": summary}, indent=2))
    return 0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of each scenario's percentiles, and what the mesh adds to them."""
    out: dict[str, Any] = {}
    for name in ("direct", "mesh"):
        mine = [r for r in runs if r["scenario"] == name and r["latency_us"].get("count")]
        out[name] = {
            q: round(statistics.median(r["latency_us"][q] for r in mine), 1)
            for q in ("p50", "p90", "p99", "p99.9")
        } | {
            "ok_per_s": statistics.median(r["ok_per_s"] for r in mine),
            "errors": sum(sum(r["errors"].values()) for r in mine),
        }
    out["added_us"] = {
        q: round(out["mesh"][q] - out["direct"][q], 1) for q in ("p50", "p90", "p99", "p99.9")
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
