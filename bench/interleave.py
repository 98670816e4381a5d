"""Interleaved A/B timing shared by the small benches (gradnorm_buckets, generation_shrink)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


def interleaved(variants: dict[str, Callable[[], object]], reps: int) -> dict:
    """Each variant once (its compiles; the output kept), then `reps` rounds taking turns, the order
    alternating per round. Returns outputs, first_call_s, times_s and median_s per variant."""
    import numpy as np

    outs, warm = {}, {}
    for name, fn in variants.items():
        t = time.perf_counter()
        outs[name] = fn()
        warm[name] = round(time.perf_counter() - t, 2)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(reps):
        for name in list(variants)[:: 1 if rep % 2 == 0 else -1]:
            t = time.perf_counter()
            variants[name]()
            times[name].append(round(time.perf_counter() - t, 2))
            print(name, times[name][-1], "s", os.getloadavg(), flush=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"outputs": outs, "first_call_s": warm, "times_s": times, "median_s": med}


def machine_info() -> dict:
    import jax

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__}
