"""Push-to-effect latency: from `git push` to the new policy being enforced on a request.

The setup, all on loopback and all real processes:

    working clone --git push--> bare repo <--git://-- `weft run --repo git://...`
                                (served by `git daemon`)        | writes proxyconfig.json
                                                                v
    this script --HTTP_PROXY--> a/web's sidecar --mTLS--> b/api's sidecar --> demo app

The intent is the smallest that has a policy to flip: a Mesh, Services a/web and b/api (each
run locally as `weft demo-app`), and an AccessPolicy in b admitting namespace a. Trials
alternate between removing that policy (a/web -> api.b then gets 403) and restoring it (200).

One trial:

1. commit the change in the working clone (not timed), wait 1.2 s plus a uniform random part
   as wide as the longest periodic loop involved (1.2 s for the sidecars' 1 s file poll, or the
   reconciler's poll interval), so the push lands at a uniformly random phase of each; then
   `git push` to the bare repo;
   **t0** is the moment `git push` returns;
2. webhook mode only: POST the push webhook at once, signed as a git host signs it
   (`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`); its round trip counts;
3. send `GET http://api.b:8080/` through a/web's sidecar (its HTTP_PROXY port, from
   `<state>/local/ports.json`) every 5 ms, each on a new connection, until the response has
   the expected status: **t1** is when that response arrived. Push-to-effect = t1 - t0.

After t1 the reconciler's own view is read (cheap, off the timed path): `status.json`
(`lastSuccessTime`, `lastDurationSeconds` of the reconcile that applied the pushed commit)
and the mtime of each workload's `proxyconfig.json`. That splits each sample into
t0 -> reconcile start (webhook round trip, or waiting for the next poll, plus the fetch),
the reconcile itself (validate, compile, plan, write files, status), and config written ->
t1 (the sidecar noticing the new file, reloading, and the next probe).

Modes, each a fresh `weft run` on a fresh state directory and git server:

- `webhook`: `--poll 60 --webhook 127.0.0.1:<port>`, so polling cannot explain an apply;
- `poll-1`, `poll-2`: `--poll 1` / `--poll 2`, no webhook.

Each mode runs one unrecorded warm-up trial, then `--trials` recorded ones. Raw samples, the
machine, versions and the load average (before, per trial, after) go to
`bench/results/push-to-effect.json`; a Markdown table is printed.

    .venv/bin/python bench/push_to_effect.py [--trials 40] [--modes webhook,poll-1,poll-2]
        [--probe-ms 5] [--out bench/results/push-to-effect.json] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reconciler.gitsource import webhook  # noqa: E402
from tests.gitservers import GitDaemon, Upstream, free_port, git  # noqa: E402

SECRET = "push-to-effect-bench-secret"
MESH = """\
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: bench.local}
"""
SERVICES = """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: a}
spec: {ports: [{name: http, port: 8080}], local: {command: [weft, demo-app]}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: b}
spec: {ports: [{name: http, port: 8080}], local: {command: [weft, demo-app]}}
"""
ALLOW = """\
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-a, namespace: b}
spec: {from: [{namespaces: [a]}]}
"""
TARGET_URL = "http://api.b:8080/"
WORKLOADS = ("a/web/default", "b/api/default")
EFFECT_TIMEOUT = 30.0  # seconds a trial waits for the new answer


@dataclass(frozen=True)
class Mode:
    name: str
    poll: float
    webhook: bool


MODES = {
    "webhook": Mode("webhook", 60.0, True),
    "poll-1": Mode("poll-1", 1.0, False),
    "poll-2": Mode("poll-2", 2.0, False),
}

# The pause before each push: at least GAP_MIN s, so every reload of the previous trial is done,
# plus a uniform random part as wide as the longest periodic loop involved (the sidecar's 1 s
# file poll, or the reconciler's poll), so the push lands at a uniformly random phase of each.
GAP_MIN = 1.2
SIDECAR_WINDOW = 1.2


def gap_window(mode: Mode) -> tuple[float, float]:
    width = SIDECAR_WINDOW if mode.webhook else max(SIDECAR_WINDOW, mode.poll)
    return GAP_MIN, GAP_MIN + width


def probe(port: int) -> int:
    """One GET to api.b through a/web's sidecar on a new connection; the status, 0 on error."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", TARGET_URL, headers={"Host": "api.b:8080"})
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    except OSError:
        return 0
    finally:
        conn.close()


def wait_for(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Mesh:
    """A git server with the seed intent, and `weft run` following it; closed with every
    process it started."""

    def __init__(self, root: Path, mode: Mode) -> None:
        self.root, self.mode = root, mode
        self.upstream = Upstream(root / "git", "mesh.git")
        self.upstream.commit(
            {"mesh.yaml": MESH, "services.yaml": SERVICES, "policies.yaml": ALLOW}, "seed"
        )
        self.daemon: GitDaemon | None = GitDaemon(root / "git")
        self.state = root / "state"
        self.hook_port = free_port()
        args = [
            sys.executable,
            "-m",
            "reconciler.cli",
            "run",
            "--repo",
            self.daemon.url(self.upstream),
            "--state-dir",
            str(self.state),
            "--poll",
            str(mode.poll),
        ]
        if mode.webhook:
            args += ["--webhook", f"127.0.0.1:{self.hook_port}"]
        self.log: IO[str] = (root / "weft-run.log").open("w")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            args,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WEFT_WEBHOOK_SECRET": SECRET},
            start_new_session=True,  # its own process group, so a last-resort kill is scoped
        )
        self.policy = True
        self.outbound = 0

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def start(self) -> None:
        started = time.monotonic()
        wait_for(
            "the first applied revision",
            lambda: str(self.status().get("lastAppliedRevision") or "").startswith("main@sha1:"),
            90,
        )
        ports = json.loads((self.state / "local" / "ports.json").read_text())
        self.outbound = int(ports["outbound:a/web/default"])
        wait_for("a/web -> api.b to answer 200", lambda: probe(self.outbound) == 200, 60)
        self.startup_seconds = time.monotonic() - started

    def commit(self) -> tuple[str, int]:
        """Flip the policy in the working clone and commit, without pushing; (sha, expected)."""
        work = self.upstream.work
        self.policy = not self.policy
        if self.policy:
            (work / "policies.yaml").write_text(ALLOW)
        else:
            (work / "policies.yaml").unlink()
        git(work, "add", "-A")
        message = "restore from-a: a may call b" if self.policy else "remove from-a: close b to a"
        git(work, "commit", "-q", "-m", message)
        return git(work, "rev-parse", "HEAD"), 200 if self.policy else 403

    def push(self) -> None:
        git(self.upstream.work, "push", "-q", "origin", "HEAD")

    def hook(self) -> int:
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        sig = webhook.sign(SECRET.encode(), body)  # as a git host signs it
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.hook_port}/hook",
            data=body,
            method="POST",
            headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return e.code

    def config_mtime(self, workload: str) -> float | None:
        path = self.state / "local" / "workloads" / workload / "proxyconfig.json"
        try:
            return path.stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def close(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # weft stops its apps and sidecars, then exits
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.log.close()
        if self.daemon is not None:
            self.daemon.close()
            self.daemon = None


def trial(mesh: Mesh, probe_s: float, rng: random.Random) -> dict[str, Any]:
    sha, expected = mesh.commit()
    revision = f"main@sha1:{sha}"
    before = {w: mesh.config_mtime(w) for w in WORKLOADS}
    gap = rng.uniform(*gap_window(mesh.mode))
    time.sleep(gap)
    load_before = os.getloadavg()[0]

    push_started = time.time()
    mesh.push()
    t0_wall, t0 = time.time(), time.perf_counter()
    hook_status = hook_ms = None
    if mesh.mode.webhook:
        hook_status = mesh.hook()
        hook_ms = (time.perf_counter() - t0) * 1e3
    old = 403 if expected == 200 else 200
    probes, others = 0, dict[str, int]()
    deadline = t0 + EFFECT_TIMEOUT
    t1 = None
    while time.perf_counter() < deadline:
        sent = time.perf_counter()
        got = probe(mesh.outbound)
        probes += 1
        if got == expected:
            t1 = time.perf_counter()
            break
        if got != old:  # neither the old nor the new answer
            others[str(got)] = others.get(str(got), 0) + 1
        time.sleep(max(0.0, probe_s - (time.perf_counter() - sent)))
    effect_ms = None if t1 is None else (t1 - t0) * 1e3

    # The reconciler's own view, read after the fact.
    with contextlib.suppress(RuntimeError):
        wait_for(
            "the reconciler to report the revision",
            lambda: mesh.status().get("lastAppliedRevision") == revision,
            10,
        )
    status = mesh.status()
    applied = status.get("lastAppliedRevision") == revision
    success = status.get("lastSuccessTime") if applied else None
    duration = status.get("lastDurationSeconds") if applied else None

    def since_t0(wall: float | None) -> float | None:
        return None if wall is None else round((wall - t0_wall) * 1e3, 2)

    written = {}
    for w in WORKLOADS:
        mtime = mesh.config_mtime(w)
        written[w] = since_t0(mtime) if mtime is not None and mtime != before[w] else None
    written_ms = max((v for v in written.values() if v is not None), default=None)
    return {
        "expected": expected,
        "revision": revision,
        "gap_s": round(gap, 3),
        "t0_unix": t0_wall,
        "push_ms": round((t0_wall - push_started) * 1e3, 2),
        "hook_status": hook_status,
        "hook_ms": None if hook_ms is None else round(hook_ms, 2),
        "effect_ms": None if effect_ms is None else round(effect_ms, 2),
        "probes": probes,
        "other_statuses": others,
        "applied_by_reconciler": applied,
        "reconcile_start_ms": (
            since_t0(success - duration) if success is not None and duration is not None else None
        ),
        "reconcile_ms": None if duration is None else round(duration * 1e3, 2),
        "config_written_ms": written,
        "applied_ms": since_t0(success),
        "written_to_effect_ms": (
            None if effect_ms is None or written_ms is None else round(effect_ms - written_ms, 2)
        ),
        "load1_before": load_before,
        "load1_after": os.getloadavg()[0],
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    if len(s) == 1:
        return {"n": 1, "min": s[0], "p50": s[0], "p90": s[0], "p99": s[0], "max": s[0]}
    q = statistics.quantiles(s, n=100, method="inclusive")
    return {
        "n": len(s),
        "min": round(s[0], 1),
        "p50": round(q[49], 1),
        "p90": round(q[89], 1),
        "p99": round(q[98], 1),
        "max": round(s[-1], 1),
        "mean": round(statistics.fmean(s), 1),
    }


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def col(key: str, only: int | None = None) -> list[float]:
        return [
            float(t[key])
            for t in samples
            if t.get(key) is not None and (only is None or t["expected"] == only)
        ]

    written = [
        max(v for v in t["config_written_ms"].values() if v is not None)
        for t in samples
        if any(v is not None for v in t["config_written_ms"].values())
    ]
    return {
        "effect_ms": percentiles(col("effect_ms")),
        "effect_ms_to_403": percentiles(col("effect_ms", 403)),
        "effect_ms_to_200": percentiles(col("effect_ms", 200)),
        "reconcile_start_ms": percentiles(col("reconcile_start_ms")),
        "reconcile_ms": percentiles(col("reconcile_ms")),
        "applied_ms": percentiles(col("applied_ms")),
        "config_written_ms": percentiles(written),
        "written_to_effect_ms": percentiles(col("written_to_effect_ms")),
        "push_ms": percentiles(col("push_ms")),
        "hook_ms": percentiles(col("hook_ms")),
        "timeouts": sum(1 for t in samples if t["effect_ms"] is None),
        "load1": percentiles([t["load1_before"] for t in samples]),
    }


def run_mode(
    mode: Mode, trials: int, probe_s: float, rng: random.Random, keep: bool
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"weft-push-{mode.name}-"))
    mesh = Mesh(root, mode)
    result: dict[str, Any] = {"mode": mode.name, "poll_seconds": mode.poll}
    result["webhook"] = mode.webhook
    result["uptime_before"] = uptime()
    try:
        mesh.start()
        result["startup_seconds"] = round(mesh.startup_seconds, 2)
        warmup = trial(mesh, probe_s, rng)
        samples = []
        for i in range(trials):
            samples.append(trial(mesh, probe_s, rng))
            t = samples[-1]
            print(
                f"  {mode.name} {i + 1:>3}/{trials}: -> {t['expected']} "
                f"effect {t['effect_ms']} ms (applied {t['applied_ms']} ms, "
                f"written->effect {t['written_to_effect_ms']} ms) load {t['load1_before']:.2f}",
                flush=True,
            )
        result["uptime_after"] = uptime()
        result["warmup"] = warmup
        result["samples"] = samples
        result["summary"] = summarise(samples)
    finally:
        mesh.close()
        if keep:
            print(f"  kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    import pygit2  # noqa: PLC0415

    def out(*args: str) -> str:
        done = subprocess.run(args, capture_output=True, text=True, check=False, cwd=REPO)
        return done.stdout.strip()

    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": out("git", "--version"),
        "pygit2": importlib.metadata.version("pygit2"),
        "libgit2": pygit2.LIBGIT2_VERSION,
        "commit": out("git", "rev-parse", "--short", "HEAD"),
        "dirty_files": len(out("git", "status", "--porcelain").splitlines()),
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | n | p50 ms | p90 ms | p99 ms | max ms | min ms "
        "| p50 -> 403 / -> 200 ms | load1 (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["summary"]
        e, load = s["effect_ms"], s["load1"]
        deny, allow = s["effect_ms_to_403"], s["effect_ms_to_200"]
        lines.append(
            f"| {r['mode']} | {e['n']} | {e['p50']:.0f} | {e['p90']:.0f} | {e['p99']:.0f} "
            f"| {e['max']:.0f} | {e['min']:.0f} | {deny['p50']:.0f} / {allow['p50']:.0f} "
            f"| {load['p50']:.2f} |"
        )
    lines += [
        "",
        "| mode | t0 -> reconcile start p50 | reconcile p50 | t0 -> config written p50 "
        "| config written -> effect p50 (min-max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["summary"]
        w = s["written_to_effect_ms"]
        lines.append(
            f"| {r['mode']} | {s['reconcile_start_ms']['p50']:.0f} "
            f"| {s['reconcile_ms']['p50']:.0f} | {s['config_written_ms']['p50']:.0f} "
            f"| {w['p50']:.0f} ({w['min']:.0f}-{w['max']:.0f}) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="recorded pushes per mode")
    parser.add_argument("--modes", default="webhook,poll-1,poll-2")
    parser.add_argument("--probe-ms", type=float, default=5.0, help="probe request interval")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/push-to-effect.json")
    parser.add_argument("--keep", action="store_true", help="keep state dirs and logs")
    args = parser.parse_args()
    modes = [MODES[m] for m in args.modes.split(",")]
    for tool in ("git", "uptime"):
        if shutil.which(tool) is None:
            print(f"push_to_effect: {tool} is missing", file=sys.stderr)
            return 2
    rng = random.Random(args.seed)
    started = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "push-to-effect",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/push_to_effect.py", *sys.argv[1:]]),
        "machine": machine(),
        "settings": {
            "trials_per_mode": args.trials,
            "warmup_per_mode": 1,
            "probe_interval_ms": args.probe_ms,
            "gap_seconds": {m.name: list(gap_window(m)) for m in modes},
            "seed": args.seed,
        },
        "modes": [],
    }
    for mode in modes:
        print(f"== {mode.name} ({uptime()})", flush=True)
        report["modes"].append(run_mode(mode, args.trials, args.probe_ms / 1e3, rng, args.keep))
    report["total_seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report["modes"]))
    print(f"\nraw results: {args.out} ({report['total_seconds']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
