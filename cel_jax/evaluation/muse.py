"""The MUSE metric suite as open-unlearning (OU) computes it, on the published MUSE layout.

Data: `muse-bench/MUSE-News` / `MUSE-Books` on the hub, or a local folder of `<config>/<split>.jsonl`
(e.g. tests/fixtures/muse): `verbmem/forget` (prompt, gt), `knowmem/{forget,retain}_qa` (+ `_icl` shots),
`privleak/{forget,holdout}` (text).
* forget_verbmem_ROUGE: greedy continuation of `prompt` (128 new tokens), ROUGE-L F1 against the full `gt`.
* forget/retain_knowmem_ROUGE: all ICL shots + the question in the tag template ("Question: ...\\nAnswer: "),
  32 new tokens, cut at the stop strings, ROUGE-L F1.
* privleak: Min-K 40% (`mia_min_k`, forget = members vs holdout) against the retain model's AUC.
* extraction_strength / exact_memorization: on verbmem prompt + gt (labels on gt only).
This file holds the config, its checks and the default metric list; the metrics and their jobs are
registered in `muse_suite` and run by the shared `runner`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from cel_jax.evaluation import muse_suite as _registers_muse  # noqa: F401  (the metrics and jobs)
from cel_jax.evaluation import registry, runner

MUSE_METRICS = (
    "forget_verbmem_ROUGE",
    "forget_knowmem_ROUGE",
    "retain_knowmem_ROUGE",
    "privleak",
    "extraction_strength",
    "exact_memorization",
)
ALLOWED = (*MUSE_METRICS, "mia_min_k")  # every registered MUSE metric (muse_suite)
KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")


def default_config() -> ml_collections.ConfigDict:
    """Defaults of `cel-jax eval --config=configs/eval/muse.py` and of `evaluate_muse`."""
    c = ml_collections.ConfigDict()
    c.benchmark = "muse"
    c.model = "smollm2-135m-instruct"  # HF folder, hub name or alias (CLI only)
    c.dtype = "float32"  # CLI only
    c.data_dir = "muse-bench/MUSE-News"  # hub name or a local folder in the same layout
    c.template = "qa_base"  # knowmem prompts: OU's Llama-2 base tags ("Question: ", "\n", "Answer: ", "\n\n")
    c.max_length = 2048  # verbmem / privleak content tokens after the prefix (OU CompletionDataset)
    c.knowmem_max_length = 512  # knowmem prompt tokens (OU truncates tag-template prompts to this)
    c.batch_size = 8  # rows per forward batch
    c.generation_batch_size = 32
    c.verbmem_max_new_tokens = 128
    c.knowmem_max_new_tokens = 32
    c.stopwords = KNOWMEM_STOPWORDS
    c.bucket_multiple = 32
    c.retain_logs_path = config_dict.placeholder(str)  # retain model's MUSE_EVAL.json (privleak)
    c.max_items = config_dict.placeholder(int)  # first N items of every set (ICL shots are kept whole)
    c.compat = False  # reference masking (input_ids != pad) and privleak's 0.5 fallback
    c.metrics = MUSE_METRICS
    c.progress = True
    return c


def validate(cfg: Mapping[str, Any]) -> None:
    registry.check_names("muse", cfg["metrics"])
    for key in ("batch_size", "generation_batch_size", "verbmem_max_new_tokens", "knowmem_max_new_tokens"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be positive, got {cfg[key]}")
    if cfg["max_items"] is not None and int(cfg["max_items"]) < 1:
        raise ValueError(f"max_items must be positive (or None for all items), got {cfg['max_items']}")


def run(model, tok, cfg: Mapping[str, Any], ref_model=None) -> tuple[dict, dict]:
    """Compute the requested MUSE metrics; returns (logs, timings_s). Missing values carry a "note"."""
    del ref_model  # MUSE's privleak reads the retrained model's AUC from the retain logs
    validate(cfg)
    return runner.run_suite("muse", model, tok, cfg)
