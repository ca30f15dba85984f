"""Every fuzz seed and every crash ever found, replayed through its target (tests/fuzz/).

A crash atheris finds lands in `tests/fuzz/crashes/<target>/`; committed there, it is a
regression test here for good. A few hundred random-byte mutations of each seed run too, so the
targets' invariants are exercised even where atheris is not installed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.fuzz import seeds, targets

HERE = Path(__file__).resolve().parent / "fuzz"


def inputs() -> list[tuple[str, Path]]:
    found = []
    for name in targets.TARGETS:
        for kind in ("corpus", "crashes"):
            folder = HERE / kind / name
            if folder.is_dir():
                found += [(name, p) for p in sorted(folder.iterdir()) if p.is_file()]
    return found


def test_every_target_has_a_seed_corpus() -> None:
    for name in targets.TARGETS:
        folder = HERE / "corpus" / name
        assert folder.is_dir(), f"run python -m tests.fuzz.seeds: {folder} is missing"
        assert len(list(folder.iterdir())) >= 5, folder
    assert set(seeds.SEEDS) == set(targets.TARGETS)


@pytest.mark.parametrize(
    ("name", "path"), inputs(), ids=lambda x: x if isinstance(x, str) else x.name[:12]
)
def test_replay(name: str, path: Path) -> None:
    targets.TARGETS[name](path.read_bytes())


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_mutated_seeds_keep_the_invariant(name: str) -> None:
    rng = random.Random(f"weft-fuzz-{name}")
    corpus = [p.read_bytes() for p in sorted((HERE / "corpus" / name).iterdir())]
    for _ in range(150):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(3)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[at:at] = rng.randbytes(rng.randint(1, 16))
            else:
                del data[at : at + rng.randint(1, 16)]
        targets.TARGETS[name](bytes(data))
