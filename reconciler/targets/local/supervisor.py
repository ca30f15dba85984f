"""Processes the local runtime runs, restarted with back-off when they exit on their own.

Each process has a key and a fingerprint of its spec; the target replaces a process only when
its fingerprint changes. Output goes to a log file per process in the state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import parentdeath

log = logging.getLogger("weft.local")

RESTART_BASE = 0.5
RESTART_MAX = 30.0
HEALTHY_AFTER = 30.0  # a process that ran this long starts its back-off afresh


@dataclasses.dataclass
class Spec:
    command: Sequence[str]
    env: Mapping[str, str]
    fingerprint: str
    cwd: Path | None = None
    unset: Sequence[str] = ()  # variables of weft's environment the process must not inherit


@dataclasses.dataclass
class Running:
    spec: Spec
    proc: subprocess.Popen[bytes]
    started: float
    restarts: int = 0
    next_start: float | None = None


class Supervisor:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="weft-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self, key: str, spec: Spec) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / (key.replace("/", "_") + ".log")).open("ab")
        try:
            return subprocess.Popen(
                # SIGTERM when weft dies, even by SIGKILL (parentdeath.py).
                [*parentdeath.die_with_parent(), *spec.command],
                env={k: v for k, v in os.environ.items() if k not in spec.unset} | dict(spec.env),
                cwd=spec.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches weft, which stops children in order
            )
        finally:
            out.close()

    def start(self, key: str, spec: Spec) -> None:
        with self._lock:
            self.running[key] = Running(spec, self._spawn(key, spec), time.monotonic())
        log.info("started %s", key)

    def stop(self, key: str, timeout: float = 5.0) -> None:
        with self._lock:
            entry = self.running.pop(key, None)
        if entry is None:
            return
        _terminate(entry.proc, timeout)
        log.info("stopped %s", key)

    def fingerprints(self) -> dict[str, str]:
        with self._lock:
            return {k: r.spec.fingerprint for k, r in self.running.items()}

    def pid(self, key: str) -> int | None:
        with self._lock:
            entry = self.running.get(key)
            return entry.proc.pid if entry else None

    def restarts(self, key: str) -> int:
        with self._lock:
            entry = self.running.get(key)
            return entry.restarts if entry else 0

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                for key, r in self.running.items():
                    if r.proc.poll() is None:
                        continue
                    if r.next_start is None:
                        healthy = now - r.started >= HEALTHY_AFTER
                        r.restarts = 0 if healthy else r.restarts
                        delay = min(RESTART_BASE * 2**r.restarts, RESTART_MAX)
                        r.next_start = now + delay
                        log.warning(
                            "%s exited with %s; restarting in %.1f s", key, r.proc.returncode, delay
                        )
                    elif now >= r.next_start:
                        r.proc = self._spawn(key, r.spec)
                        r.started, r.next_start = now, None
                        r.restarts += 1

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            entries = list(self.running.items())
            self.running.clear()
        # Apps first, then the sidecars they depend on.
        for _, entry in sorted(entries, key=lambda kv: not kv[0].startswith("app/")):
            _terminate(entry.proc, timeout)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
