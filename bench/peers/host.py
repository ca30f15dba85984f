"""The machine side of a benchmark: processes started and stopped by pid, pinned to a CPU,
their CPU time and memory from /proc, and waiting for a quiet machine."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import platform
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | str | None, argv: list[str]) -> list[str]:
    """`taskset` execs the command, so the pid we get is the pid of the program itself."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
        elif key == "Threads":
            fields[key] = int(value)
    return fields


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of every thread of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of a process and of its live children (one level: nginx's workers)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


H2LOAD_SUMMARY = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")
H2LOAD_FINISHED = re.compile(r"finished in ([0-9.]+)s, ([0-9.]+) req/s")
H2LOAD_PROTOCOL = re.compile(r"Application protocol: (\S+)")


def h2load_summary(stdout: str) -> dict[str, Any]:
    """What h2load's report says: requests total/started/done/succeeded, seconds, req/s, and
    the application protocol it negotiated."""
    out: dict[str, Any] = {}
    if m := H2LOAD_SUMMARY.search(stdout):
        out.update(
            zip(("total", "started", "done", "succeeded"), map(int, m.groups()), strict=True)
        )
    if m := H2LOAD_FINISHED.search(stdout):
        out["seconds"], out["req_per_s"] = float(m.group(1)), float(m.group(2))
    if m := H2LOAD_PROTOCOL.search(stdout):
        out["protocol"] = m.group(1)
    return out


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (threads of one name added up): who in the process works."""
    by_name: dict[str, float] = collections.defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            by_name[name] += (int(fields[11]) + int(fields[12])) / TICKS
    return dict(by_name)


def all_cpu_seconds() -> float:
    """CPU seconds of every process on the machine, with what each has reaped from its children
    (utime + stime + cutime + cstime), so work that starts and ends in a window still counts.
    (Per-CPU busy time from /proc/stat undercounts short bursts badly on this kernel.)"""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15])
    return total / TICKS


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this VM wanted it (`steal` in
    /proc/stat), summed over CPUs: noise no process on this machine shows."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / TICKS if len(fields) > 8 else 0.0


def wait_for_low_steal(max_steal: float, max_wait: float, window: float = 5.0) -> float:
    """Wait (up to `max_wait`) for a `window` in which the hypervisor took at most `max_steal`
    % of one core; return the last window's figure."""
    deadline = time.monotonic() + max_wait
    while True:
        before = steal_seconds()
        time.sleep(window)
        stolen = (steal_seconds() - before) / window * 100
        if stolen <= max_steal or time.monotonic() >= deadline:
            return stolen


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def wait_for_quiet(max_load: float, max_wait: float) -> dict[str, Any]:
    """Wait (up to `max_wait` seconds) until the 1-minute load average is below `max_load`."""
    start = time.monotonic()
    first = loadavg()
    while loadavg()[0] >= max_load and time.monotonic() - start < max_wait:
        print(f"   load average {loadavg()[0]:.2f} >= {max_load}; waiting", flush=True)
        time.sleep(min(30.0, max(1.0, max_wait - (time.monotonic() - start))))
    last = loadavg()
    return {
        "threshold": max_load,
        "at_start": first,
        "when_measuring_began": last,
        "waited_s": round(time.monotonic() - start, 1),
        "reached": last[0] < max_load,
    }


def wait_for_idle_cpu(max_other: float, max_wait: float, window: float = 5.0) -> float:
    """Wait (up to `max_wait` seconds) for a `window` in which other processes use less than
    `max_other` % of a core; return the last figure. Right after a run the load average still
    carries that run, so this looks at CPU time itself."""
    deadline = time.monotonic() + max_wait
    while True:
        before, mine = all_cpu_seconds(), cpu_seconds()
        time.sleep(window)
        other = (all_cpu_seconds() - before - (cpu_seconds() - mine)) / window * 100
        if other < max_other or time.monotonic() > deadline:
            return other
        print(f"   other work {other:.0f}% of a core; waiting", flush=True)


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def command_output(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip()


def http_get(url: str, host: str | None = None, timeout: float = 2.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_until(what: str, check: Callable[[], bool], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: {p.args!r} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after 30 s")
        time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child: SIGTERM it if this benchmark dies (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Processes:
    """Processes this benchmark started, stopped by pid: SIGTERM, then SIGKILL."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], cpu: int | str | None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                pinned(cpu, argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.logs,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  # no threads here
            )
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        targets = self.procs if procs is None else procs
        for p in targets:
            if p.poll() is None:
                p.terminate()
        for p in targets:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = [p for p in self.procs if p not in targets]
