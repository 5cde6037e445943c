"""Wall-clock measurement shared by the benchmark and the suite: median latency of a call (or
of several calls timed in turns) and a description of the machine it ran on (recorded with
every timing)."""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `repeats` calls of fn in ms, after `warmup` untimed calls."""
    return interleaved_median_ms({"fn": fn}, repeats, warmup)["fn"]


def interleaved_median_ms(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median wall time in ms of each of `fns`, timed in turns (one call of each, `repeats`
    rounds) after `warmup` untimed calls of each: whatever else loads the machine meanwhile
    slows them alike, so their ratios hold better than those of one-after-the-other medians."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()  # CUDA runs asynchronously: time the work, not the launch
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU, torch threads, versions, CUDA and today's date."""
    return {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
        "date": datetime.date.today().isoformat(),
    }
