"""Small helpers shared by the throughput modules: peak RSS, load, medians, timers, the CPU's name, the
log line and the rotation that interleaves contenders. Standard library only (the PyTorch worker and the
FSDP child import this module)."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

IGNORE = -100  # = cel_jax.data.format.IGNORE, not imported: the PyTorch worker must not load JAX
DEFAULT_MODEL = "smollm2-135m-instruct"


def maxrss_mb() -> float:
    """Peak resident set size of this process so far, in MB: VmHWM of /proc/self/status where it exists
    (the peak of this process's own address space), else ru_maxrss (KiB on Linux). In a spawned child,
    ru_maxrss starts at the parent's RSS at fork time (the kernel carries it over at exec); VmHWM does not."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loadavg() -> list[float]:
    """The 1 / 5 / 15-minute load averages, rounded (recorded beside the timings they may disturb)."""
    return [round(x, 2) for x in os.getloadavg()]


def median(xs: Sequence[float]) -> float:
    """The median of xs, NaN when empty (a phase that measured nothing)."""
    return float(statistics.median(xs)) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds of the call)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def log(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries the Markdown)."""
    print(f"[throughput {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rotate(xs: list, k: int) -> list:
    """xs rotated by k: repetition k runs the contenders in a different order (no fixed position bias)."""
    k %= len(xs)
    return xs[k:] + xs[:k]
