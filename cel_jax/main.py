"""`cel-jax` command line: absl flags + ml-collections config files with `--config.key=value` overrides.

cel-jax generate --model=smollm2-135m-instruct --prompt="What is the capital of France?"
cel-jax export   --model=DIR_OR_ALIAS --out=DIR
cel-jax finetune --config=configs/tofu_smollm2_finetune.py --workdir=DIR [--config.key=value ...]
cel-jax unlearn  --config=configs/demo.py --workdir=DIR [--config.key=value ...]
cel-jax eval     --config=configs/eval/tofu.py --config.model=DIR --workdir=DIR
cel-jax plan     --config=configs/tofu_llama3_1_8b.py
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags
from ml_collections import config_flags

COMMANDS = {
    # name: (module, function, needs --config)
    "generate": ("cel_jax.commands", "generate", False),
    "export": ("cel_jax.commands", "export", False),
    "finetune": ("cel_jax.train", "finetune_command", True),
    "unlearn": ("cel_jax.train", "unlearn_command", True),
    "eval": ("cel_jax.evaluation.driver", "eval_command", True),
    "plan": ("cel_jax.plan", "plan_command", True),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory (checkpoints, metrics, results); local or gs://.")
flags.DEFINE_string("model", "smollm2-135m-instruct", "HF folder, hub name or alias (generate/export).")
flags.DEFINE_multi_string("prompt", [], "Prompt(s) for `generate` (chat template applied).")
flags.DEFINE_string("out", None, "Output folder for `export`.")
flags.DEFINE_integer("max_new_tokens", 200, "Generation budget for `generate`.")
flags.DEFINE_string("dtype", "float32", "Compute dtype for generate/export (float32 or bfloat16).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: cel-jax {{{'|'.join(COMMANDS)}}} [flags]; got {argv[1:]}")
    name = argv[1]
    module, fn, needs_config = COMMANDS[name]
    if needs_config and _CONFIG.value is None:
        raise app.UsageError(f"`cel-jax {name}` needs --config=configs/....py")
    import jax
    from absl import logging

    if FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    jax.config.config_with_absl()
    compilation_cache(jax)
    func = getattr(importlib.import_module(module), fn)
    return func(_CONFIG.value, FLAGS)


def compilation_cache(jax) -> None:
    """Persistent XLA cache: a rerun of the same job skips compilation (CEL_JAX_XLA_CACHE="" disables)."""
    import os
    from pathlib import Path

    path = os.environ.get("CEL_JAX_XLA_CACHE", str(Path.home() / ".cache" / "cel_jax" / "xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()
