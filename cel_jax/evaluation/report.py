"""Evaluation logs on disk: read retain-model logs, write EVAL / SUMMARY JSON atomically, render a table.

File layout as open-unlearning (OU): `<out>/<NAME>_EVAL.json` holds every metric's result (including the
pre-compute metrics), top-level keys sorted, `indent=4`; `<out>/<NAME>_SUMMARY.json` maps each metric to its
non-None `agg_value`. NAME is "TOFU" or "MUSE".
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# Keys that OU reads from the retain model's logs (`retain_logs_path`).
RETAIN_TR_KEY = "forget_truth_ratio"  # forget_quality: value_by_index[*].score
RETAIN_MIA_KEY = "mia_min_k"  # privleak: agg_value


def _to_jsonable(obj: Any) -> Any:
    """Plain Python types for json: numpy / jax scalars and arrays become floats, ints, lists."""
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__array__"):  # np.ndarray, jax.Array
        return _to_jsonable(np.asarray(obj).tolist())
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 4) -> None:
    """Write JSON via a temp file in the same folder and os.replace; no partial file on failure."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(_to_jsonable(obj), indent=indent)  # serialise first: a failure leaves nothing behind
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def summarize(logs: Mapping[str, Any], metric_names: Iterable[str] | None = None) -> dict[str, Any]:
    """OU `Evaluator.summarize`: {metric: agg_value} for the listed metrics whose agg_value is not None."""
    names = set(logs) if metric_names is None else set(metric_names)
    summary = {}
    for name, result in logs.items():
        if name in names and isinstance(result, Mapping) and result.get("agg_value") is not None:
            summary[name] = result["agg_value"]
    return dict(sorted(summary.items()))


def write_eval(
    out_dir: str | os.PathLike,
    logs: Mapping[str, Any],
    name: str = "TOFU",
    metric_names: Iterable[str] | None = None,
) -> tuple[str, str]:
    """Write `<name>_EVAL.json` (all logs, keys sorted) and `<name>_SUMMARY.json`; return both paths."""
    out_dir = os.fspath(out_dir)
    eval_path = os.path.join(out_dir, f"{name}_EVAL.json")
    summary_path = os.path.join(out_dir, f"{name}_SUMMARY.json")
    write_json_atomic(eval_path, dict(sorted(logs.items())))
    write_json_atomic(summary_path, summarize(logs, metric_names))
    return eval_path, summary_path


def load_retain_logs(path: str | os.PathLike, require: Iterable[str] = (RETAIN_TR_KEY,)) -> dict[str, Any]:
    """Read a retain model's `TOFU_EVAL.json` / `MUSE_EVAL.json` (ours or OU's) and check the keys used.

    `require` lists the metrics that must be there: `forget_truth_ratio` (forget_quality) needs a
    value_by_index whose entries have "score"; `mia_min_k` (privleak) needs a numeric agg_value.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"retain logs {path} do not exist")
    with open(path) as f:
        try:
            logs = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"retain logs {path} are not valid JSON: {e}") from e
    if not isinstance(logs, dict):
        raise ValueError(f"retain logs {path} must be a JSON object of metrics; got {type(logs).__name__}")
    for key in require:
        if key not in logs:
            raise ValueError(f"retain logs {path} lack the metric {key!r} (have {sorted(logs)})")
        entry = logs[key]
        if not isinstance(entry, dict):
            raise ValueError(f"retain logs {path}: {key!r} must be an object, got {type(entry).__name__}")
        if key == RETAIN_TR_KEY:
            vbi = entry.get("value_by_index")
            if not isinstance(vbi, dict) or not vbi:
                raise ValueError(f"retain logs {path}: {key!r} lacks a non-empty 'value_by_index'")
            for idx, item in vbi.items():
                if not isinstance(item, dict) or "score" not in item:
                    raise ValueError(f"retain logs {path}: {key}.value_by_index[{idx!r}] lacks 'score'")
        elif key == RETAIN_MIA_KEY:
            value = entry.get("agg_value")
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"retain logs {path}: {key!r} lacks a finite numeric 'agg_value'")
    return logs


def retain_truth_ratios(logs: Mapping[str, Any]) -> list[float | None]:
    """Per-item truth ratios of the retain model (OU `forget_truth_ratio.value_by_index[*].score`)."""
    if RETAIN_TR_KEY not in logs:
        raise ValueError(f"retain logs lack the metric {RETAIN_TR_KEY!r}")
    return [None if e is None else e.get("score") for e in logs[RETAIN_TR_KEY]["value_by_index"].values()]


def retain_mia_auc(logs: Mapping[str, Any] | None, key: str = RETAIN_MIA_KEY) -> float | None:
    """The retain model's MIA AUC for privleak (OU `mia_min_k.agg_value`), None without logs or key."""
    if not logs or key not in logs or not isinstance(logs[key], Mapping):
        return None
    value = logs[key].get("agg_value")
    return None if value is None else float(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return str(value)
    v = float(value)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.3e}"
    return f"{v:.4f}"


def render_table(summary: Mapping[str, Any], title: str | None = None) -> str:
    """A plain two-column text table (metric, value) of a summary dict."""
    rows = [(str(k), _fmt(v)) for k, v in summary.items()]
    w_name = max([len("metric")] + [len(r[0]) for r in rows])
    w_val = max([len("value")] + [len(r[1]) for r in rows])
    rule = "-" * (w_name + 2 + w_val)
    lines = [title] if title else []
    lines += [f"{'metric':<{w_name}}  {'value':>{w_val}}", rule]
    lines += [f"{n:<{w_name}}  {v:>{w_val}}" for n, v in rows]
    return "\n".join(lines)
