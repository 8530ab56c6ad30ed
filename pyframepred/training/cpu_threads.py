"""The default CPU thread count: the cores that are actually free when a run starts.

torch's default (one thread per core) collapses on a machine busy with other work: every parallel
region waits for its slowest thread, and a thread whose core is taken waits for a scheduler time
slice (milliseconds) -- a 2-core machine with one core busy ran training steps 5-8x slower with 2
threads than with 1. So the default counts the cores left idle over a short sample of
``/proc/stat`` (Linux) and uses that many threads, at least one; ``--threads N`` overrides it.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Tuple


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> Optional[Tuple[int, int]]:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])  # guest time is already counted in user


def free_cores(sample_s: float = 0.25) -> Optional[float]:
    """Cores left idle by everything else on the machine, measured over ``sample_s`` seconds
    (None where /proc/stat is not available)."""
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(sample_s)
    b = _cpu_times()
    if b is None or b[1] <= a[1]:
        return None
    idle_share = (b[0] - a[0]) / (b[1] - a[1])
    return idle_share * (os.cpu_count() or 1)


def default_threads(sample_s: float = 0.25) -> Tuple[int, str]:
    """The thread count to use by default and a short reason for the log."""
    cores = usable_cores()
    free = free_cores(sample_s)
    if free is None:
        return cores, f"{cores} cores"
    n = max(1, min(cores, int(free + 0.3)))  # a core 70% idle counts as free
    return n, f"{free:.1f} of {cores} cores free"
