"""Kubernetes target scale: first apply and no-op reconcile against a real API server.

For each size, a fresh etcd + kube-apiserver + kube-controller-manager (tests/kube.py, built from
tools/kube) gets deploy/, one namespace per five services, and one workload per Service (what an
application team would have); then a generated intent (bench/intent_scale.py's generator) is
reconciled:

- first apply: validate + compile + observe + plan + apply + prune, with every object created,
  every identity issued into Secrets and every workload injected;
- no-op: the same revision again from a new target (as a restarted reconciler would), which must
  plan nothing and write nothing; run `--repeat` times, median reported.

Each phase is timed separately. Raw results go to `bench/results/kube-scale.json`.

    .venv/bin/python bench/kube_scale.py [--sizes 100,500,1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.intent_scale import generate, machine  # noqa: E402
from reconciler import compiler, intent  # noqa: E402
from reconciler.targets.kubernetes import Api, KubernetesTarget  # noqa: E402
from tests import kube  # noqa: E402
from tests.kubeapps import workload  # noqa: E402

RESULTS = REPO / "bench" / "results" / "kube-scale.json"
IMAGE = "registry.example/weft:bench"
TARGET_NOOP_SECONDS = 5.0  # the target for 1,000 services


def populate(api: Api, desired: compiler.DesiredState) -> int:
    """Namespaces and one workload per Service, applied as the application team."""
    namespaces = sorted({ns for ns, _ in desired.workloads})
    for ns in namespaces:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    bodies = []
    for (ns, svc), spec in desired.workloads.items():
        sa = desired.proxy_configs[(ns, svc)].workload.service_account
        bodies.append(workload(spec.kind, ns, spec.name or svc, dict(spec.pod_selector), sa))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: api.apply(b, manager="app-team"), bodies))
    return len(bodies)


def reconcile(api: Api, root: Path) -> tuple[dict[str, float], int]:
    """One reconcile of the intent at `root`, timed by phase; and the number of changes."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    mesh, _ = intent.check(intent.files.from_directory(root))
    assert mesh is not None
    times["validate"] = time.perf_counter() - start
    t = time.perf_counter()
    desired = compiler.compile(mesh)
    times["compile"] = time.perf_counter() - t
    target = KubernetesTarget(api, image=IMAGE)
    t = time.perf_counter()
    observed = target.observe()
    times["observe"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = target.plan(desired, observed)
    times["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    target.apply(plan)
    times["apply"] = time.perf_counter() - t
    t = time.perf_counter()
    target.prune(plan)
    times["prune"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - start
    return times, len(plan.changes)


def resource_versions(api: Api) -> dict[str, str]:
    found = {}
    for kind in ("ConfigMap", "Secret", "Service", "NetworkPolicy", "Deployment", "StatefulSet"):
        for obj in api.list(kind):
            meta = obj["metadata"]
            found[f"{kind}/{meta['namespace']}/{meta['name']}"] = meta["resourceVersion"]
    return found


def run_size(services: int, repeat: int, bin_dir: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="weft-kube-bench-"))
    intent_root = work / "intent"
    intent_root.mkdir()
    counts = generate(intent_root, services)
    (work / "cluster").mkdir()
    cp = kube.start(bin_dir, work / "cluster")
    try:
        cp.kubectl("apply", "-f", str(REPO / "deploy"))
        api = cp.admin()
        mesh, _ = intent.check(intent.files.from_directory(intent_root))
        assert mesh is not None
        workloads = populate(api, compiler.compile(mesh))
        first, changes = reconcile(api, intent_root)
        before = resource_versions(api)
        noops = []
        for _ in range(repeat):
            times, noop_changes = reconcile(api, intent_root)
            assert noop_changes == 0, f"a no-op reconcile planned {noop_changes} changes"
            noops.append(times)
        written = {k for k, v in resource_versions(api).items() if before.get(k) != v}
        assert not written, f"a no-op reconcile wrote {sorted(written)[:5]}"
    finally:
        cp.close()
        shutil.rmtree(work, ignore_errors=True)
    median = {k: statistics.median(n[k] for n in noops) for k in noops[0]}
    return {
        "services": services,
        "counts": counts,
        "workloads": workloads,
        "objects": len(before),
        "firstApply": {"changes": changes, "seconds": first},
        "noop": {"runs": noops, "median": median},
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| services | objects | first apply (s) | no-op (s) | no-op: validate+compile | "
        "observe | plan | apply+prune |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["noop"]["median"]
        rows.append(
            f"| {r['services']:,} | {r['objects']:,} | {r['firstApply']['seconds']['total']:.1f} "
            f"| **{m['total']:.2f}** | {m['validate'] + m['compile']:.2f} | {m['observe']:.2f} "
            f"| {m['plan']:.2f} | {m['apply'] + m['prune']:.2f} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="100,500,1000")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    bin_dir = kube.binaries()
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"kube scale: {size} services ...", file=sys.stderr, flush=True)
        results.append(run_size(size, args.repeat, bin_dir))
        print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(table(results))
    largest = max(results, key=lambda r: r["services"])
    if largest["services"] >= 1000:
        ok = largest["noop"]["median"]["total"] < TARGET_NOOP_SECONDS
        print(f"\nno-op reconcile of {largest['services']:,} services: "
              f"{largest['noop']['median']['total']:.2f} s (target < {TARGET_NOOP_SECONDS:.0f} s: "
              f"{'met' if ok else 'NOT met'})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
