"""The cached stages of the TOFU benchmarks (bench.tofu_mini, tofu_sweep, tofu_full): train or evaluate into
a stage folder once, mark it with DONE.json, and read it back on a rerun; files are written atomically."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, then rename: no half-written file."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    """`obj` as indented JSON, written atomically (write_text)."""
    write_text(path, json.dumps(obj, indent=2))


def done(stage: Path) -> dict | None:
    """The stage's DONE.json (what it recorded when it finished), or None while it is not done."""
    f = stage / "DONE.json"
    return json.loads(f.read_text()) if f.exists() else None


def train_stage(stage: Path, cfg, mode: str, keep_checkpoints: bool = False) -> dict:
    """Fine-tune or unlearn into `stage` (resumes from its checkpoints); model exported to stage/model.

    Once the stage is done its Orbax checkpoint (weights + AdamW moments: 1.4 GB for SmolLM2-135M, the
    exported model is 0.5 GB) is only needed to continue training, so it is deleted unless
    `keep_checkpoints`: a full run keeps ~6 GB on disk instead of ~23 GB.
    """
    from cel_jax.training import train

    got = done(stage)
    if got is not None:
        return got
    print(f"\n=== {stage.name}: {mode} ({cfg.get('method', 'finetune')}) ===", flush=True)
    t0 = time.time()
    out = train.run(cfg, str(stage), mode)
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    info = {"wall_s": round(time.time() - t0, 1), "summary": out["summary"], "final_row": rows[-1]}
    write_json(stage / "DONE.json", info)
    if not keep_checkpoints and (stage / "model").is_dir():
        shutil.rmtree(stage / "ckpt", ignore_errors=True)
    return info


def eval_stage(stage: Path, model_dir: Path, overrides: dict, dtype: str = "float32") -> dict:
    """TOFU suite of the exported model in model_dir (computing in `dtype`), written to `stage`."""
    from cel_jax.evaluation import driver
    from cel_jax.model import hf_io

    got = done(stage)
    if got is not None:
        return got
    print(f"\n=== {stage.name}: TOFU eval of {model_dir} ===", flush=True)
    t0 = time.time()
    model, tok = hf_io.load_pretrained(str(model_dir), dtype=dtype)
    res = driver.evaluate("tofu", model, tok, overrides, stage, model_name=str(model_dir))
    info = {"wall_s": round(time.time() - t0, 1), "summary": res["summary"]}
    write_json(stage / "DONE.json", info)
    return info


def stage_curves(stage: Path) -> dict:
    """Per-step training curves of a stage (its metrics.jsonl): step, losses, ε, λ and whether λ moved."""
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    keys = ("step", "loss", "forget_loss", "retain_loss", "eps", "dual", "dual_active")
    return {k: [r[k] for r in rows] for k in keys}
