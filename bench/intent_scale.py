"""Intent scale: wall time and peak memory of validate + compile on generated meshes.

For each size the benchmark writes a realistic intent repository (about 5 services per
namespace, 3 AccessPolicies per service, a default-deny Mesh, one canary Route per namespace and
some ExternalServices) as real YAML files into a temporary directory, then measures in a fresh
subprocess per run, so that each run's peak RSS is its own:

- validate: `intent.files.from_directory` + `intent.check` (what `intent.load` runs; `check`
  also returns warnings, so the run can assert the intent is clean);
- compile: `compiler.compile` + `compiler.files` (every output file serialised to text);
- peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end of the run;
- stage split: file reading, parse + schema (`intent.loader.read`, timed through a wrapper around
  the name `reconciler.intent.read`), cross-document validation (the rest of `check`), compile
  and serialise.

A baseline process that only imports the modules gives the fixed RSS cost. Raw results go to
`bench/results/intent-scale.json`; a Markdown table is printed.

    .venv/bin/python bench/intent_scale.py [--sizes 500,1000,2000,4000] [--repeat 3]
    .venv/bin/python bench/intent_scale.py --profile 1000     # cProfile hotspots of one run
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import itertools
import json
import math
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler import compiler, intent

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "intent-scale.json"
DEFAULT_SIZES = (500, 1000, 2000, 4000)
SERVICES_PER_NAMESPACE = 5
TRUST_DOMAIN = "weft.bench"
API_VERSION = "weft.dev/v1alpha1"

# The targets the issue sets for a 1,000-service mesh.
TARGET_SERVICES = 1000
TARGET_SECONDS = 2.0
TARGET_RSS_MB = 300.0

Doc = dict[str, Any]

# ---------------------------------------------------------------- intent generator


def _ns(i: int, count: int) -> str:
    return f"team-{i % count:04d}"


def _meta(name: str, namespace: str) -> Doc:
    return {"name": name, "namespace": namespace}


def _services(ns: str) -> list[Doc]:
    """Five services: a web front, a canaried API, a worker, an auth server and a database."""

    def service(name: str, spec: Doc) -> Doc:
        return {
            "apiVersion": API_VERSION,
            "kind": "Service",
            "metadata": _meta(name, ns),
            "spec": spec,
        }

    return [
        service("web", {"ports": [{"name": "http", "port": 8080}]}),
        service(
            "api",
            {
                "ports": [{"name": "http", "port": 8080, "targetPort": 8081}],
                "workload": {"kind": "Deployment", "podSelector": {"app": "api"}},
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}},
                ],
                "loadBalancer": "LEAST_REQUEST",
            },
        ),
        service(
            "worker",
            {
                "serviceAccount": "worker",
                "ports": [{"name": "http", "port": 9090, "protocol": "http2"}],
            },
        ),
        service(
            "auth",
            {
                "ports": [
                    {"name": "grpc", "port": 9000, "protocol": "grpc"},
                    {"name": "metrics", "port": 9102},
                ],
                "loadBalancer": "ROUND_ROBIN",
            },
        ),
        service(
            "db",
            {
                "ports": [{"name": "postgres", "port": 5432, "protocol": "tcp"}],
                "workload": {"kind": "StatefulSet"},
            },
        ),
    ]


def _policies(i: int, count: int) -> list[Doc]:
    """Three policies per service: namespace, service and conditional (`when`) sources mixed.

    Each namespace is called by a few neighbours (i-2 .. i+5), never by all namespaces, so the
    number of allowed edges grows linearly with the mesh, as in a real one. The only deny (on
    the database, from a namespace half the mesh away) shadows no allow: every allow of `db`
    admits callers in its own namespace.
    """
    ns = _ns(i, count)

    def policy(name: str, to: Doc, sources: list[Doc], **extra: Any) -> Doc:
        spec: Doc = {}
        if "action" in extra:
            spec["action"] = extra.pop("action")
        spec |= {"to": to, "from": sources, **extra}
        return {
            "apiVersion": API_VERSION,
            "kind": "AccessPolicy",
            "metadata": _meta(name, ns),
            "spec": spec,
        }

    def near(k: int) -> str:
        return _ns(i + k, count)

    return [
        # web
        policy("web-from-neighbours", {"services": ["web"]}, [{"namespaces": [near(-1), near(1)]}]),
        policy("web-from-partner-api", {"services": ["web"]}, [{"services": [f"{near(2)}/api"]}]),
        policy(
            "web-read-only",
            {"services": ["web"]},
            [{"namespaces": [near(3)]}],
            when={"methods": ["GET"], "paths": ["/api/*"]},
        ),
        # api
        policy("api-from-frontend", {"services": ["api"]}, [{"services": ["web", f"{ns}/worker"]}]),
        policy("api-from-upstream", {"services": ["api"]}, [{"namespaces": [near(-1)]}]),
        policy(
            "api-read-only",
            {"services": ["api"], "ports": ["http"]},
            [{"namespaces": [near(1)]}, {"services": [f"{near(5)}/worker"]}],
            when={"methods": ["GET", "HEAD"], "paths": ["/api/*", "/healthz"]},
        ),
        # worker
        policy("worker-from-api", {"services": ["worker"]}, [{"services": ["api"]}]),
        policy("worker-from-batch", {"services": ["worker"]}, [{"namespaces": [near(4)]}]),
        policy(
            "worker-jobs",
            {"services": ["worker"]},
            [{"services": [f"{near(-1)}/worker"]}],
            when={"methods": ["POST"], "paths": ["/jobs/*"]},
        ),
        # auth
        policy(
            "auth-grpc-local", {"services": ["auth"], "ports": ["grpc"]}, [{"namespaces": [ns]}]
        ),
        policy(
            "auth-grpc-neighbour",
            {"services": ["auth"], "ports": [9000]},
            [{"services": [f"{near(1)}/web", f"{near(1)}/api"]}],
        ),
        policy(
            "auth-metrics",
            {"services": ["auth"], "ports": ["metrics"]},
            [{"namespaces": [near(-2)]}],
            when={"methods": ["GET"], "paths": ["/metrics"]},
        ),
        # db
        policy(
            "db-clients",
            {"services": ["db"], "ports": ["postgres"]},
            [{"services": ["api", "worker"]}],
        ),
        policy(
            "db-from-auth",
            {"services": ["db"]},
            [{"identities": [f"spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/auth"]}],
        ),
        policy(
            "db-never-from-far",
            {"services": ["db"]},
            [{"namespaces": [near(count // 2)]}],
            action="deny",
        ),
    ]


def _route(i: int, count: int) -> Doc:
    """A canary of the namespace's api: header opt-in, then a weighted split with retries."""
    ns = _ns(i, count)
    canary = (5, 10, 20, 50)[i % 4]
    return {
        "apiVersion": API_VERSION,
        "kind": "Route",
        "metadata": _meta("api-canary", ns),
        "spec": {
            "host": f"api.{ns}",
            "rules": [
                {
                    "matches": [{"headers": [{"name": "x-canary", "exact": "always"}]}],
                    "backends": [{"subset": "v2"}],
                },
                {
                    "matches": [{"path": {"prefix": "/api/v2/"}, "method": "GET"}],
                    "backends": [{"subset": "v2"}],
                    "timeout": "1s",
                },
                {
                    "backends": [
                        {"subset": "v1", "weight": 100 - canary},
                        {"subset": "v2", "weight": canary},
                    ],
                    "timeout": "2s",
                    "retries": {
                        "attempts": 2,
                        "perTryTimeout": "500ms",
                        "retryOn": ["connect-failure", "refused-stream", "gateway-error"],
                        "budget": {"percent": 20},
                    },
                },
            ],
        },
    }


def _externals(i: int, count: int) -> list[Doc]:
    """Two namespaces in ten call something outside the mesh: a payment API or a mail relay."""
    ns = _ns(i, count)
    if i % 10 == 0:
        return [
            {
                "apiVersion": API_VERSION,
                "kind": "ExternalService",
                "metadata": _meta("payments", ns),
                "spec": {
                    "host": f"api.payments-{i:04d}.example",
                    "ports": [{"port": 80, "protocol": "http", "tlsOrigination": {"port": 443}}],
                    "allowedFrom": [{"services": ["api"]}],
                },
            }
        ]
    if i % 10 == 5:
        return [
            {
                "apiVersion": API_VERSION,
                "kind": "ExternalService",
                "metadata": _meta("mail", ns),
                "spec": {
                    "host": f"smtp.mail-{i:04d}.example",
                    "ports": [{"port": 587, "protocol": "tls"}],
                    "allowedFrom": [{"namespaces": [ns]}],
                },
            }
        ]
    return []


def _mesh() -> Doc:
    return {
        "apiVersion": API_VERSION,
        "kind": "Mesh",
        "metadata": {"name": "bench"},
        "spec": {
            "trustDomain": TRUST_DOMAIN,
            "mtls": "STRICT",
            "defaultPolicy": "deny",
            "certificateLifetime": "24h",
            "telemetry": {"samplingPercent": 1},
        },
    }


def _dump(path: Path, docs: Sequence[Doc]) -> int:
    text = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=None)
    path.write_text(text)
    return len(text.encode())


def generate(root: Path, services: int) -> dict[str, int]:
    """Write an intent repository of `services` services under `root`; return its counts."""
    if services % SERVICES_PER_NAMESPACE or services < 10 * SERVICES_PER_NAMESPACE:
        raise ValueError(f"sizes are multiples of {SERVICES_PER_NAMESPACE}, at least 50")
    count = services // SERVICES_PER_NAMESPACE
    counts = {
        "namespaces": count,
        "services": 0,
        "policies": 0,
        "routes": 0,
        "externals": 0,
        "files": 1,
        "bytes": _dump(root / "mesh.yaml", [_mesh()]),
    }
    for i in range(count):
        folder = root / _ns(i, count)
        folder.mkdir()
        parts = {
            "services": _services(_ns(i, count)),
            "policies": _policies(i, count),
            "routes": [_route(i, count)],
            "externals": _externals(i, count),
        }
        for kind, docs in parts.items():
            if not docs:
                continue
            name = {"externals": "external"}.get(kind, kind)
            counts["bytes"] += _dump(folder / f"{name}.yaml", docs)
            counts["files"] += 1
            counts[kind] += len(docs)
    return counts


# ---------------------------------------------------------------- measured process


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_read(stages: dict[str, float]) -> None:
    """Wrap the `read` that `intent.check` calls, to split parsing from cross-document checks."""
    original: Callable[..., Any] | None = getattr(intent, "read", None)
    if original is None:  # the package changed shape: report no split rather than a wrong one
        return
    wrapped: Callable[..., Any] = original

    def read(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return wrapped(*args, **kwargs)
        finally:
            stages["parse_schema"] = stages.get("parse_schema", 0.0) + time.perf_counter() - start

    setattr(intent, "read", read)  # noqa: B010  # monkeypatch, this process only


def measure(root: Path) -> dict[str, Any]:
    """One validate + compile of the intent under `root`, as the worker process runs it."""
    stages: dict[str, float] = {}
    _timed_read(stages)
    t0 = time.perf_counter()
    snapshot = intent.files.from_directory(root)
    t1 = time.perf_counter()
    mesh, diagnostics = intent.check(snapshot)
    t2 = time.perf_counter()
    errors = [d for d in diagnostics if d.severity is intent.Severity.ERROR]
    if mesh is None or errors:
        shown = "\n".join(str(d) for d in errors[:20])
        raise SystemExit(f"generated intent has {len(errors)} errors:\n{shown}")
    desired = compiler.compile(mesh)
    t3 = time.perf_counter()
    out = compiler.files(desired)
    t4 = time.perf_counter()
    peak = _peak_rss_mb()
    split: dict[str, float] | None = None
    if "parse_schema" in stages:
        split = {
            "read_files": t1 - t0,
            "parse_schema": stages["parse_schema"],
            "cross_document": (t2 - t1) - stages["parse_schema"],
            "compile": t3 - t2,
            "serialise": t4 - t3,
        }
    return {
        "validate_s": t2 - t0,
        "compile_s": t4 - t2,
        "total_s": t4 - t0,
        "peak_rss_mb": peak,
        "stages_s": split,
        "warnings": len(diagnostics) - len(errors),
        "intent_files": len(snapshot.files),
        "output_files": len(out),
        "output_bytes": sum(len(text.encode()) for text in out.values()),
        "edges": len(desired.edges),
    }


def _worker(mode: str, root: str | None) -> None:
    if mode == "baseline":
        result: dict[str, Any] = {"peak_rss_mb": _peak_rss_mb()}
    else:
        assert root is not None
        result = measure(Path(root))
    print(json.dumps(result))


def _spawn(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- driver and report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_size(services: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"weft-bench-{services}-") as tmp:
        counts = generate(Path(tmp), services)
        runs = [_spawn("measure", tmp) for _ in range(repeat)]
    metrics = ("validate_s", "compile_s", "total_s", "peak_rss_mb")
    result: dict[str, Any] = {
        "services": services,
        "intent": counts,
        "runs": runs,
        **{m: summary([r[m] for r in runs]) for m in metrics},
    }
    if all(r["stages_s"] for r in runs):
        result["stages_s"] = {
            stage: summary([r["stages_s"][stage] for r in runs]) for stage in runs[0]["stages_s"]
        }
    result["total_ms_per_service"] = 1000 * result["total_s"]["median"] / services
    return result


def _cell(s: dict[str, float], fmt: str) -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}\N{EN DASH}{s['max']:{fmt}})"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| services | files | validate s | compile s | total s | peak RSS MB | ms/service |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['services']:,} | {r['intent']['files']:,} | {_cell(r['validate_s'], '.2f')} "
            f"| {_cell(r['compile_s'], '.2f')} | {_cell(r['total_s'], '.2f')} "
            f"| {_cell(r['peak_rss_mb'], '.0f')} | {r['total_ms_per_service']:.2f} |"
        )
    if all("stages_s" in r for r in results):
        lines += [
            "",
            "| services | read files s | parse + schema s | cross-document s | compile s "
            "| serialise s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            st = r["stages_s"]
            cells = " | ".join(
                f"{st[k]['median']:.2f}"
                for k in ("read_files", "parse_schema", "cross_document", "compile", "serialise")
            )
            lines.append(f"| {r['services']:,} | {cells} |")
    return "\n".join(lines)


def scaling(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Between consecutive sizes: the exponent k of time ~ services^k (1 is linear)."""
    steps = []
    for a, b in itertools.pairwise(results):
        ratio = math.log(b["services"] / a["services"])
        step: dict[str, Any] = {"from": a["services"], "to": b["services"]}
        for metric in ("total", "validate", "compile"):
            grew = b[f"{metric}_s"]["median"] / a[f"{metric}_s"]["median"]
            step[f"{metric}_exponent"] = math.log(grew) / ratio
        steps.append(step)
    return steps


def targets(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    at = next((r for r in results if r["services"] == TARGET_SERVICES), None)
    if at is None:
        return None
    seconds, rss = at["total_s"]["median"], at["peak_rss_mb"]["median"]
    return {
        "services": TARGET_SERVICES,
        "total_s": {"target": TARGET_SECONDS, "measured": seconds, "met": seconds < TARGET_SECONDS},
        "peak_rss_mb": {"target": TARGET_RSS_MB, "measured": rss, "met": rss < TARGET_RSS_MB},
    }


def profile(services: int, top: int) -> None:
    """Run validate + compile once under cProfile and print the hotspots."""
    with tempfile.TemporaryDirectory(prefix=f"weft-bench-{services}-") as tmp:
        generate(Path(tmp), services)
        profiler = cProfile.Profile()
        profiler.enable()
        measure(Path(tmp))
        profiler.disable()
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(order).print_stats(top)
        print(f"== top {top} by {order}\n{buffer.getvalue()}")


def _sizes(text: str) -> list[int]:
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(DEFAULT_SIZES),
        help="comma-separated service counts (default: 500,1000,2000,4000)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (default: 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="SERVICES",
        help="profile one run of this size with cProfile instead",
    )
    parser.add_argument("--top", type=int, default=25, help="rows of --profile output")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1] if len(args.worker) > 1 else None)
        return 0
    if args.profile:
        profile(args.profile, args.top)
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    info = machine()
    print(f"machine: {info['cpu']}, {info['nproc']} cores, Python {info['python']}", flush=True)
    baseline = summary([_spawn("baseline")["peak_rss_mb"] for _ in range(args.repeat)])
    print(f"baseline RSS after imports: {baseline['median']:.0f} MB", flush=True)
    results = []
    for services in args.sizes:
        started = time.perf_counter()
        results.append(run_size(services, args.repeat))
        r = results[-1]
        print(
            f"{services:>6} services: total {r['total_s']['median']:.2f} s, "
            f"peak {r['peak_rss_mb']['median']:.0f} MB "
            f"({time.perf_counter() - started:.0f} s with generation)",
            flush=True,
        )

    report = {
        "benchmark": "intent-scale",
        "machine": info,
        "repeat": args.repeat,
        "baseline_rss_mb": baseline,
        "sizes": results,
        "scaling": scaling(results),
        "targets": targets(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(results))
    for step in report["scaling"]:
        print(
            f"scaling {step['from']:,} -> {step['to']:,}: total ~ n^{step['total_exponent']:.2f} "
            f"(validate n^{step['validate_exponent']:.2f}, "
            f"compile n^{step['compile_exponent']:.2f})"
        )
    if report["targets"]:
        t = report["targets"]
        for key, unit in (("total_s", "s"), ("peak_rss_mb", "MB")):
            print(
                f"target at {t['services']:,} services: {key} < {t[key]['target']} {unit}: "
                f"{t[key]['measured']:.2f} {unit} -> {'met' if t[key]['met'] else 'MISSED'}"
            )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
