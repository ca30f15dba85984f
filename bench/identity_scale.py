"""Identity issuance: certificates per second on one core, and a 5,000-service mesh end to end.

Measured in one process pinned to one CPU (`os.sched_setaffinity`), with the real code paths:

- rate: `Issuer.issue` (a new P-256 key, the certificate built and signed by the CA) plus the
  PEM encoding of the chain and the key — everything a workload certificate costs before it is
  stored. Also split into key generation, build + sign, and PEM encoding, measured separately.
- mesh: `identity.ensure` with the file store on a fresh state directory for N identities (one
  service account per service, five services per namespace): the CA generated on first use,
  every certificate issued and written atomically (fsync'd) with its key and bundle. Then a
  restart (every certificate read back, checked and reused: nothing issued), and a CA rollover
  in its three steps with a one-minute grace (times injected): `ca.rotate` (the new root into
  every ca.crt), `ensure` after the grace (promote, reissue everything), `ensure` after another
  (retire the old CA, rewrite every ca.crt).

The identities are built directly rather than compiled from intent, so the number measures
issuance, not intent compilation (`bench/intent_scale.py` measures that). Raw results go to
`bench/results/identity-scale.json`; a Markdown summary is printed.

    .venv/bin/python bench/identity_scale.py [--count 5000] [--rate-count 5000] [--repeat 3]
        [--state-root /tmp --state-root /dev/shm]     # compare a disk with tmpfs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend
from cryptography.hazmat.primitives import serialization

from reconciler import identity
from reconciler.compiler.identities import Identity
from reconciler.identity import authority, keys, workload
from reconciler.identity.spiffe import SpiffeId

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "identity-scale.json"
TRUST_DOMAIN = "weft.bench"
LIFETIME = datetime.timedelta(hours=24)
TARGET_PER_SECOND = 1000.0


def _pin_to_one_core() -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rate(count: int, repeat: int) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    issuer = authority.generate(TRUST_DOMAIN, now).issuer()
    ids = [SpiffeId(TRUST_DOMAIN, f"ns{i // 5}", f"sa{i}") for i in range(count)]

    def end_to_end() -> None:
        for spiffe in ids:
            cert = issuer.issue(spiffe, LIFETIME, now)
            cert.chain_pem()
            cert.key.pem()

    def keygen() -> None:
        for _ in ids:
            keys.PrivateKey.generate()

    ca_key = keys.PrivateKey.generate()
    ca_cert = authority.generate(TRUST_DOMAIN, now).certificate
    public = keys.PrivateKey.generate().public_key()

    def sign() -> None:
        for spiffe in ids:
            ca_key.sign(workload.template(spiffe, public, ca_cert, now, now + LIFETIME))

    sample = issuer.issue(ids[0], LIFETIME, now)

    def encode() -> None:
        for _ in ids:
            sample.certificate.public_bytes(serialization.Encoding.PEM)
            sample.key.pem()

    runs = {
        name: [count / _timed(run) for _ in range(repeat)]
        for name, run in [
            ("end_to_end", end_to_end),
            ("keygen", keygen),
            ("build_and_sign", sign),
            ("pem_encode", encode),
        ]
    }
    return {"count": count, "per_second": {k: _summary(v) for k, v in runs.items()}}


def _mesh_once(identities: list[Identity], state: Path) -> tuple[dict[str, float], int]:
    store = identity.FileStore(state)
    now = datetime.datetime.now(datetime.UTC)

    def ensure(at: datetime.datetime) -> None:
        identity.ensure(store, identities, trust_domain=TRUST_DOMAIN, lifetime=LIFETIME, now=at)

    minute = datetime.timedelta(minutes=1)
    # A rollover as an operator runs it, with a one-minute grace: three separate steps.
    seconds = {
        "first_issue": _timed(lambda: ensure(now)),
        "restart": _timed(lambda: ensure(now + minute)),
        "rotate": _timed(lambda: identity.ca.rotate(store, now + 2 * minute, grace=minute)),
        "promote_and_reissue": _timed(lambda: ensure(now + 3 * minute)),
        "retire": _timed(lambda: ensure(now + 4 * minute)),
    }
    return seconds, sum(1 for p in state.rglob("*") if p.is_file() and not p.is_symlink())


def mesh(count: int, repeat: int, root: str | None) -> dict[str, Any]:
    identities = [
        Identity(f"spiffe://{TRUST_DOMAIN}/ns/ns{i // 5}/sa/sa{i}", f"ns{i // 5}", f"sa{i}", ())
        for i in range(count)
    ]
    phases: dict[str, list[float]] = {}
    files = 0
    for _ in range(repeat):
        state = Path(tempfile.mkdtemp(prefix="weft-identity-bench-", dir=root))
        try:
            seconds, files = _mesh_once(identities, state)
        finally:
            shutil.rmtree(state)
        for phase, value in seconds.items():
            phases.setdefault(phase, []).append(value)
    return {
        "identities": count,
        "state_filesystem": _filesystem(root or tempfile.gettempdir()),
        "state_root": root or tempfile.gettempdir(),
        "file_create_us": _create_microseconds(root),
        "files": files,
        "seconds": {k: _summary(v) for k, v in phases.items()},
    }


def _create_microseconds(root: str | None) -> float:
    """What creating one small file costs on this filesystem: the floor under every write."""
    folder = Path(tempfile.mkdtemp(prefix="weft-create-probe-", dir=root))
    try:
        start = time.perf_counter()
        for i in range(500):
            (folder / str(i)).write_bytes(b"x" * 600)
        return (time.perf_counter() - start) / 500 * 1e6
    finally:
        shutil.rmtree(folder)


def _filesystem(path: str) -> str:
    done = subprocess.run(
        ["df", "--output=fstype", path], capture_output=True, text=True, check=False
    )
    return done.stdout.split()[-1] if done.returncode == 0 else "unknown"


def _machine(cpu: int | None) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": model,
        "pinned_cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=5000, help="identities in the mesh run")
    p.add_argument("--rate-count", type=int, default=5000, help="certificates per rate run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--state-root",
        action="append",
        help="where the mesh run keeps its state directory; repeat to compare filesystems "
        "(default: the system temporary directory)",
    )
    args = p.parse_args(argv)
    cpu = _pin_to_one_core()
    result = {
        "benchmark": "identity-scale",
        "machine": _machine(cpu),
        "repeat": args.repeat,
        "rate": rate(args.rate_count, args.repeat),
        "mesh": [mesh(args.count, args.repeat, root) for root in args.state_root or [None]],
    }
    measured = result["rate"]["per_second"]["end_to_end"]["median"]
    result["target"] = {
        "per_second": TARGET_PER_SECOND,
        "measured": measured,
        "met": measured >= TARGET_PER_SECOND,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    def row(name: str, s: dict[str, float], fmt: str) -> str:
        return f"| {name} | {s['median']:{fmt}} ({s['min']:{fmt}}\N{EN DASH}{s['max']:{fmt}}) |"

    print("| issuance, one core | certificates/s |\n|---|---:|")
    for name, s in result["rate"]["per_second"].items():
        print(row(name, s, ",.0f"))
    for run in result["mesh"]:
        print(
            f"\n| {args.count:,} identities, file store on {run['state_filesystem']} "
            f"({run['file_create_us']:.0f} µs per file created) | s |"
        )
        print("|---|---:|")
        for name, s in run["seconds"].items():
            print(row(name, s, ".2f"))
    print(f"\nraw results: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
