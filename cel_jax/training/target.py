"""The model to unlearn from, made in the same command when asked: `cfg.target.finetune` first teaches
`cfg.model.name_or_path` the `cfg.target.split` rows (a fine-tuning run), once; later runs with the
same settings reuse it from `$CEL_JAX_CACHE/targets/<key>/model`.

This is how the README's main job starts from a model that knows the demo people: the embedded
SmolLM2 never saw them, so unlearning them from it could only show damage, never forgetting.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

TARGET_KEYS = ("split", "epochs", "lr", "batch_size", "grad_accum", "warmup_epochs")


def finetune_config(cfg):
    """The fine-tuning run's config: the unlearning run's model and data format, `cfg.target`'s recipe."""
    from cel_jax import config_base

    t = cfg.target
    ft = config_base.finetune_config()
    ft.model = cfg.model.to_dict()
    ft.data = cfg.data.to_dict()
    ft.data.train_split = t.split
    ft.data.train_rows = ""
    ft.epochs = int(t.epochs)
    ft.batch_size = int(t.batch_size)
    ft.grad_accum = int(t.get("grad_accum", 1))
    ft.optim.lr = float(t.lr)
    ft.optim.warmup_epochs = float(t.get("warmup_epochs", 0.0))
    ft.mesh = cfg.mesh.to_dict()
    ft.seed = cfg.seed
    ft.ckpt.every = 10**9  # one short run: no checkpoint; the export follows the last step at once
    ft.ckpt.save_final = False
    ft.ckpt.keep = 1
    ft.ckpt.async_save = False
    return ft


def cache_key(ft, model_folder: Path) -> str:
    """A hash of what decides the fine-tuned weights: recipe, data, base model files (nothing else)."""
    base = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model_folder.iterdir())
    keys = ("model", "data", "optim", "epochs", "batch_size", "grad_accum", "seed", "mesh")
    recipe = {k: ft[k].to_dict() if hasattr(ft[k], "to_dict") else ft[k] for k in keys}
    blob = json.dumps({"config": recipe, "base": base, "folder": str(model_folder)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_target(cfg, run) -> str:
    """`cfg.model.name_or_path`, or the cached fine-tuned model when `cfg.target.finetune` is on;
    `run(cfg, workdir, mode)` is the training loop that fine-tunes it (train.run passes itself)."""
    t = cfg.get("target")
    if t is None or not t.get("finetune", False):
        return cfg.model.name_or_path
    from cel_jax.model import embedded, hf_io
    from cel_jax.scale import hostmem
    from cel_jax.training import checks

    ft = finetune_config(cfg)
    checks.validate_config(ft, "finetune")
    base = hf_io.resolve(cfg.model.name_or_path)
    key = cache_key(ft, Path(base))
    home = embedded.cache_dir() / "targets" / key
    model_dir = home / "model"
    if (model_dir / "config.json").exists():
        print(f"target: reusing the fine-tuned model {model_dir}")
        return str(model_dir)
    print(f"target: teaching {cfg.model.name_or_path} the {t.split!r} rows first ({t.epochs} epochs; cached)")
    run_dir = home / "run"
    run(ft, str(run_dir), "finetune")
    hostmem.release(clear_compiled=True)  # the stage's arrays and programs, before unlearning allocates
    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
    (run_dir / "model").rename(model_dir)  # the marker of a finished target: written last
    return str(model_dir)
