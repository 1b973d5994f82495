"""Small timing and memory helpers for the benchmarks."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import numpy as np


def time_calls(func: Callable[[], object], repeat: int) -> np.ndarray:
    """Wall-clock seconds of ``repeat`` calls of ``func``."""
    out = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        func()
        out[i] = time.perf_counter() - start
    return out


def summary_ms(seconds) -> tuple[float, float]:
    """Median and 95th percentile in milliseconds."""
    seconds = np.asarray(seconds)
    return float(np.median(seconds) * 1e3), float(np.percentile(seconds, 95) * 1e3)


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far in MiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
