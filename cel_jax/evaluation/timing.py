"""Wall and process-CPU time of evaluation sections (the `timings` of *_META.json and the report table)."""

from __future__ import annotations

import time


def clock() -> tuple[float, float]:
    """Start of a timed section: (wall, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> dict[str, float]:
    """Wall and process-CPU seconds (all threads of this process) since `clock()`; CPU time is the
    measure that does not depend on how busy a shared machine is."""
    return {
        "wall_s": round(time.perf_counter() - start[0], 2),
        "cpu_s": round(time.process_time() - start[1], 2),
    }
