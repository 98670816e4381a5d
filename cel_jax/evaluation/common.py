"""Pieces the TOFU and MUSE suites share: forward-pass settings from a config and OU's privleak."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cel_jax.evaluation import metrics as M
from cel_jax.evaluation import report as R


def forward_kw(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of `forward.group_stats` / `item_stats` from a suite config."""
    return dict(
        batch_size=int(cfg["batch_size"]),
        multiple=int(cfg["bucket_multiple"]),
        compat=bool(cfg["compat"]),
        progress=bool(cfg["progress"]),
    )


def privleak(run) -> dict[str, Any]:
    """OU privleak from the run's mia_min_k AUC against the retain model's (its logs); without them the
    result is None with a note, or under `compat` OU's 0.5 fallback, noted."""
    compat = bool(run.cfg["compat"])
    result = M.privleak_result(run.metric("mia_min_k")["auc"], R.retain_mia_auc(run.retain_logs), compat)
    if run.retain_logs is None and compat:
        result["note"] = "compat: no retain logs, OU's fallback reference AUC 0.5 used"
    return result
