"""The end of a run: summary, feasibility report, before/after answers, export, plots, and the
checkpoint's removal once the exported model is all a rerun needs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
from flax import nnx

from cel_jax.evaluation import before_after
from cel_jax.training import checkpoint, retain_eval


def already_done(workdir) -> dict:
    """The result of a run whose config already finished in `workdir` (its summary.json)."""
    from etils import epath

    summary = json.loads((epath.Path(workdir) / "summary.json").read_text())
    return {"summary": summary, "model": None, "tokenizer": None, "report": None, "done": True}


def report_config(cfg) -> dict:
    return cfg.get("report") or {}


def before_snapshot(job, model):
    """The model's answers before training, when the report is on (process 0, unlearning with a retain
    set); None otherwise."""
    rc = report_config(job.cfg)
    show = job.mode == "unlearn" and rc.get("enabled", False) and jax.process_index() == 0
    qa = bool(job.td.retain_rows) and "question" in job.td.retain_rows[0]  # raw text has no questions
    return before_after.snapshot(model, job.tok, job.td, rc) if show and qa else None


def summary(job, state, cursor, eps: float, wall: float, start_step: int) -> dict:
    mode, spec = job.mode, job.eng.spec
    return {
        "mode": mode,
        "method": spec.method,
        "solver": spec.solver,
        "dual_rule": spec.dual_rule.name if spec.solver == "primal_dual" else None,
        "steps": int(state.step),
        "epochs": cursor.epoch if cursor.position == 0 else cursor.epoch + 1,
        "dual": float(state.dual.lam),
        "eps": eps,
        "forget_scale": float(state.forget_scale),
        "wall_s": wall,
        "resumed_from": start_step,
        "lm_head_rows": {p: c for p, c in spec.answer_rows} or "all",  # rows kept per sequence, per part
    }


def finish(job, final_params, summ: dict, before, log_path: Path) -> dict:
    """Feasibility (final weights' retain loss on ε's rows), before/after, export, plots, summary.json;
    a finished, exported run drops its checkpoint (`ckpt.keep_final` keeps it)."""
    cfg, mode, wd, eps = job.cfg, job.mode, job.mirror.local, summ["eps"]
    final = nnx.merge(job.eng.graphdef, final_params)
    if mode == "unlearn" and eps > 0 and log_path.exists():
        from cel_jax.training import feasibility

        rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
        lr_final = retain_eval.reference_retain_loss(cfg, final_params, job.eng.graphdef, job.td, job.mesh)
        tol = float(cfg.dual.get("tolerance", 0.0) or 0.0)
        summ.update(feasibility.report(rows, eps, tol, final_model_retain_loss=lr_final))
    report = None
    if before is not None:
        after = before_after.snapshot(final, job.tok, job.td, report_config(cfg))
        summ.update(before_after.summary_fields(before, after))
        report = before_after.render(job.td, before, after, summ, report_config(cfg))
    if cfg.get("export", True):
        from cel_jax.model import hf_io

        hf_io.save_pretrained(final, job.tok, wd / "model")  # all processes gather; process 0 writes
    if jax.process_index() == 0:
        from cel_jax.training import plots

        plots.training_curves(wd / "metrics.jsonl", wd / "training_curves.png")
        _write_json(wd / "summary.json", summ)
        job.mirror.upload()
    finished = summ["steps"] >= job.counts.schedule  # not cut short by max_steps
    if finished and cfg.get("export", True) and not cfg.ckpt.get("keep_final", False):
        checkpoint.barrier("cel_jax_finished")
        if jax.process_index() == 0:  # finished and exported: the optimizer state is not needed to resume
            checkpoint.remove_all(job.mirror.workdir)
    return {"summary": summ, "model": final, "tokenizer": job.tok, "data": job.td, "report": report}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
