"""Timing several implementations against each other in one process, round by round, so that a
machine's drift (this 2-core VM's speed wanders by about ±5% between minutes) falls on all of them
alike. Shared by the script modes of ``bench_conv.py`` and ``bench_frames_copy.py``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_round_robin(fns: dict[str, Callable[[], object]], n_rounds: int, warmup_s: float = 0.2) -> dict:
    """Seconds of one call of each of ``fns`` per round, ``{name: [one per round]}``: every round
    calls each once, in turn, the order reversed every other round (so that going first costs
    all alike). Before that at least ``warmup_s`` seconds of calls: after a single warm-up call the
    first shape of a process had run ~2x slow over all its rounds (2026-12-06)."""
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict = {k: [] for k in names}
    for r in range(n_rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def median_ratio(times: dict, num: str, den: str) -> float:
    """The median over rounds of times[num] / times[den] (above 1: ``den`` is faster)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))
