"""TOFU evaluation (`cel-jax eval --config=configs/eval/tofu.py --config.model=... --workdir=DIR`).

Every field is documented in `cel_jax.evaluation.tofu.default_config`. Common overrides:
  --config.forget_split=forget05           (holdout05 follows unless --config.holdout_split is set)
  --config.retain_logs_path=DIR/TOFU_EVAL.json   forget_quality and privleak (else reported as None)
  --config.reference_model_path=DIR        mia_reference
  --config.max_items=4                     quick run on the first 4 items of every set
  --config.compat=True                     the reference's attention masking (input_ids != pad)
  --config.metrics="('forget_quality','model_utility')"
"""

from cel_jax.evaluation.tofu import default_config


def get_config():
    return default_config()
