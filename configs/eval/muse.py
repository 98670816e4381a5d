"""MUSE evaluation (`cel-jax eval --config=configs/eval/muse.py --config.model=... --workdir=DIR`).

Every field is documented in `cel_jax.evaluation.muse.default_config`. Common overrides:
  --config.data_dir=muse-bench/MUSE-Books  (or a local folder in the same layout, e.g. tests/fixtures/muse)
  --config.retain_logs_path=DIR/MUSE_EVAL.json   privleak (else reported as None)
  --config.max_items=8                     quick run on the first 8 items of every set
  --config.compat=True                     the reference's attention masking (input_ids != pad)
"""

from cel_jax.evaluation.muse import default_config


def get_config():
    return default_config()
