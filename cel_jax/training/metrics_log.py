"""metrics.jsonl (one line per optimizer step) and the progress bar.

A step's metrics are fetched one step late (`emit` of the previous step after the next is dispatched):
reading them right after dispatch would make the host wait for the device every step.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import numpy as np


class MetricsLog:
    """metrics.jsonl, process 0 only; truncated to the resume step."""

    def __init__(self, workdir: Path, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        if self.enabled and self.path.exists():
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= resume_step
            ]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(k + "\n" for k in keep))
            os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


def _to_py(x):
    x = np.asarray(x)
    return x.tolist() if x.ndim else float(x)


def emit(log: MetricsLog, bar, pending, eps: float) -> None:
    """Write one step's row: pending = (step index, epoch, lr, device metrics, dual active, seq length)."""
    step_i, epoch, lr, m, active, bucket = pending
    m = jax.device_get(m)
    row = {"step": step_i + 1, "epoch": epoch, "lr": lr, "eps": eps, "dual_active": active, "seq_len": bucket}
    row.update({k: _to_py(v) for k, v in m.items()})
    log.write(row)
    bar.update(1)
    if math.isnan(row["retain_loss"]):  # fine-tuning: one loss, no constraint
        bar.set_postfix(loss=f"{row['forget_loss']:.4g}")
        return
    bar.set_postfix(
        forget=f"{row['forget_loss']:.4g}",
        retain_minus_eps=f"{row['retain_loss'] - eps:+.3g}" if eps > 0 else "n/a",
        lam=f"{row['dual']:.4g}",
    )
