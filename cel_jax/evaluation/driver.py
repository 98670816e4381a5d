"""`cel-jax eval` and the Python evaluation API (`evaluate_tofu`, `evaluate_muse`).

cel-jax eval --config=configs/eval/tofu.py --config.model=DIR_OR_ALIAS --workdir=OUT [--config.max_items=4]
cel-jax eval --config=configs/eval/muse.py --config.data_dir=tests/fixtures/muse --workdir=OUT

Writes, atomically, `OUT/<NAME>_EVAL.json` (every computed metric, OU layout: `agg_value` and
`value_by_index`, including the pre-compute metrics such as `ra_Q_A_PERT_Prob` or `mia_min_k`),
`OUT/<NAME>_SUMMARY.json` (`{metric: agg_value}` for the requested metrics; a metric that could not be
computed is null, never invented; plus `max_items`) and `OUT/<NAME>_META.json` (config, wall time per
metric group, versions), with NAME = TOFU or MUSE, and prints a table.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import jax
import ml_collections

from cel_jax.evaluation import muse, timing, tofu
from cel_jax.evaluation import report as R

SUITES: dict[str, tuple[str, ModuleType]] = {"tofu": ("TOFU", tofu), "muse": ("MUSE", muse)}


def make_config(benchmark: str, overrides: Any = None) -> ml_collections.ConfigDict:
    """The suite's defaults with `overrides` (a ConfigDict or mapping) applied; unknown keys raise."""
    if benchmark not in SUITES:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(SUITES)}")
    cfg = SUITES[benchmark][1].default_config()
    if overrides is None:
        return cfg
    items = overrides.to_dict() if isinstance(overrides, ml_collections.ConfigDict) else dict(overrides)
    unknown = sorted(set(items) - set(cfg.keys()))
    if unknown:
        raise ValueError(f"unknown {benchmark} eval config keys {unknown}; known: {sorted(cfg.keys())}")
    if items.get("benchmark", benchmark) != benchmark:
        raise ValueError(f"config is for benchmark {items['benchmark']!r}, not {benchmark!r}")
    for key, value in items.items():
        if isinstance(value, list):
            value = tuple(value)
        cfg[key] = value
    return cfg


def evaluate_tofu(
    model, tok, cfg: Any = None, out_dir: str | os.PathLike | None = None, *, ref_model=None, **kw: Any
) -> dict[str, Any]:
    """TOFU suite on an in-memory model; see `evaluate`."""
    return evaluate("tofu", model, tok, cfg, out_dir, ref_model=ref_model, **kw)


def evaluate_muse(model, tok, cfg: Any = None, out_dir: str | os.PathLike | None = None, **kw: Any) -> dict:
    """MUSE suite on an in-memory model; see `evaluate`."""
    return evaluate("muse", model, tok, cfg, out_dir, **kw)


def evaluate(
    benchmark: str,
    model,
    tok,
    cfg: Any = None,
    out_dir: str | os.PathLike | None = None,
    *,
    ref_model=None,
    model_name: str | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run a suite; write `<out_dir>/<NAME>_{EVAL,SUMMARY,META}.json` when out_dir is given.

    `cfg`: overrides of the suite's `default_config()` (partial mapping or full ConfigDict).
    Returns {"summary", "logs", "timings" ({group: {"wall_s", "cpu_s"}}, with "total"), "paths"}.
    """
    cfg = make_config(benchmark, cfg)
    name, suite = SUITES[benchmark]
    t0 = timing.clock()
    logs, timings = suite.run(model, tok, cfg, ref_model=ref_model)
    timings["total"] = timing.elapsed(t0)
    summary = summary_of(logs, cfg.metrics, cfg.max_items)
    if cfg.get("subsets"):
        summary["subsets"] = cfg.subsets
    meta = {
        "benchmark": benchmark,
        "model": model_name if model_name is not None else "<in-memory model>",
        "max_items": cfg.max_items,
        "wall_s": timings["total"]["wall_s"],
        "cpu_s": timings["total"]["cpu_s"],
        "timings": timings,
        "config": cfg.to_dict(),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "device": str(jax.devices()[0].device_kind),
    }
    paths = {}
    if out_dir is not None:
        out = os.fspath(out_dir)
        for suffix, obj in (("EVAL", dict(sorted(logs.items()))), ("SUMMARY", summary), ("META", meta)):
            paths[suffix] = os.path.join(out, f"{name}_{suffix}.json")
            R.write_json_atomic(paths[suffix], obj)
    if verbose:
        print(format_report(name, summary, logs, timings), flush=True)
    return {"summary": summary, "logs": logs, "timings": timings, "paths": paths}


def summary_of(logs: Mapping[str, Any], names: Any, max_items: int | None) -> dict[str, Any]:
    """{metric: agg_value} for every requested metric (None when it could not be computed) + max_items."""
    summary: dict[str, Any] = {n: (logs.get(n) or {}).get("agg_value") for n in names}
    summary["max_items"] = max_items
    return summary


def format_report(
    name: str, summary: Mapping[str, Any], logs: Mapping[str, Any], timings: Mapping[str, Mapping[str, float]]
) -> str:
    """The summary table, the notes of missing metrics and the time per metric group."""
    values = {k: v for k, v in summary.items() if k not in ("max_items", "subsets")}
    title = (
        f"{name} evaluation"
        + (f" (first {summary['max_items']} items)" if summary.get("max_items") else "")
        + (f" (subsets {summary['subsets']})" if summary.get("subsets") else "")
    )
    lines = [R.render_table(values, title=title)]
    notes = [
        f"  {k}: {logs[k]['note']}" for k in values if isinstance(logs.get(k), Mapping) and "note" in logs[k]
    ]
    if notes:
        lines += ["notes:", *notes]
    lines.append(f"{'time per group':<40} {'wall s':>9} {'CPU s':>9}")
    lines += [f"  {k:<38} {v['wall_s']:9.1f} {v['cpu_s']:9.1f}" for k, v in timings.items()]
    return "\n".join(lines)


def eval_command(config: ml_collections.ConfigDict, flags) -> int:
    """`cel-jax eval`: load `config.model` (and `reference_model_path`); run the suite into --workdir."""
    from cel_jax.model import hf_io

    if not flags.workdir:
        raise ValueError("`cel-jax eval` needs --workdir=DIR (where <NAME>_EVAL.json / _SUMMARY.json go)")
    benchmark = config.get("benchmark", "tofu")
    cfg = make_config(benchmark, config)
    model, tok = hf_io.load_pretrained(cfg.model, dtype=cfg.dtype)
    ref_model = None
    if cfg.get("reference_model_path"):
        ref_model, _ = hf_io.load_pretrained(cfg.reference_model_path, dtype=cfg.dtype, with_tokenizer=False)
    evaluate(benchmark, model, tok, cfg, flags.workdir, ref_model=ref_model, model_name=cfg.model)
    return 0
