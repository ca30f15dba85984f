"""Requests to the API server a few at a time: a reconcile of thousands of objects is bound by
round trips, not by the API server's capacity."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

WORKERS = 8


def each(work: Callable[[str], str], refs: list[str]) -> list[str]:
    """Run `work` over `refs` on a few threads; the first failure is raised after all finish,
    so a failed object never leaves its siblings half-started."""
    if len(refs) <= 1:
        return [work(r) for r in refs]
    done: list[str] = []
    errors: list[BaseException] = []
    with concurrent.futures.ThreadPoolExecutor(min(WORKERS, len(refs))) as pool:
        for future in [pool.submit(work, r) for r in refs]:
            try:
                done.append(future.result())
            except Exception as e:
                errors.append(e)
    if errors:
        raise errors[0]
    return done
