"""PNG plots of a run's metrics.jsonl: forget loss, retain loss with ε, and λ per optimizer step."""

from __future__ import annotations

import json
from pathlib import Path


def training_curves(metrics_path: Path, out_path: Path) -> Path | None:
    metrics_path, out_path = Path(metrics_path), Path(out_path)
    if not metrics_path.exists():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    # no pyplot: the caller's matplotlib backend is left untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(14, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].plot(steps, [r["forget_loss"] for r in rows])
    axes[0].set(
        title="forget loss",
        xlabel="step",
        yscale="log" if min(r["forget_loss"] for r in rows) > 0 else "linear",
    )
    axes[1].plot(steps, [r["retain_loss"] for r in rows], label="retain loss")
    axes[1].plot(steps, [r["eps"] for r in rows], "--", label="ε")
    axes[1].set(title="retain loss vs ε", xlabel="step")
    axes[1].legend()
    axes[2].plot(steps, [r["dual"] for r in rows])
    axes[2].set(title="λ (dual variable)", xlabel="step")
    fig.tight_layout()
    tmp = out_path.with_name(out_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out_path)
    return out_path
