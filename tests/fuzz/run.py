"""Run one fuzz target under atheris (coverage-guided libFuzzer for Python), bounded in time.

    python -m tests.fuzz.run intent --seconds 60        # what `make fuzz-smoke` does per target
    python -m tests.fuzz.run all --seconds 600          # `make fuzz`

It starts from the seed corpus `tests/fuzz/corpus/<target>/` (made by `tests.fuzz.seeds` when
missing), grows a working corpus under `$WEFT_FUZZ_WORK` (default `.fuzz/`, not committed), and
writes any crashing input to `tests/fuzz/crashes/<target>/`, where the pytest replay
(`tests/test_fuzz_corpus.py`) picks it up as a regression test once committed. Each target runs
in its own process: libFuzzer owns the process it runs in.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", help="a target name, or 'all'")
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.child:  # nothing of Weft imported yet: atheris instruments it as it is imported
        return _child(args.target, args.seconds, rest)
    from tests.fuzz import seeds, targets  # noqa: PLC0415

    names = list(targets.TARGETS) if args.target == "all" else [args.target]
    if args.target not in targets.TARGETS and args.target != "all":
        p.error(f"no target {args.target!r}; one of {', '.join(targets.TARGETS)} or 'all'")
    seeds.ensure()
    failed = []
    for name in names:
        print(f"fuzz: {name} for {args.seconds} s", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.run", name, "--seconds", str(args.seconds),
             "--child", *rest],
            cwd=ROOT,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            failed.append(name)
    if failed:
        print(f"fuzz: crashes in {', '.join(failed)}: see tests/fuzz/crashes/", flush=True)
        return 1
    return 0


def _child(name: str, seconds: int, rest: list[str]) -> int:
    import atheris  # noqa: PLC0415

    with atheris.instrument_imports(include=["reconciler"]):
        from tests.fuzz import targets  # noqa: PLC0415

    target = targets.TARGETS[name]
    work = Path(os.environ.get("WEFT_FUZZ_WORK", ROOT / ".fuzz")) / name
    crashes = HERE / "crashes" / name
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(work),
        str(HERE / "corpus" / name),
        f"-max_total_time={seconds}",
        "-timeout=10",  # one input taking 10 s is a hang, and a finding
        "-rss_limit_mb=1024",
        "-max_len=65536",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *rest,
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
