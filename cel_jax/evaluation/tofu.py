"""The TOFU metric suite as open-unlearning (OU) computes it: its config, checks and default metric list;
the metrics and their jobs are registered in `tofu_suite` and run by the shared `runner`.

Each forward result is computed once and shared: the forget set's answer statistics feed forget_Q_A_Prob,
every MIA score, exact_memorization and extraction_strength; paraphrased / perturbed answers of one
question share the prompt's KV prefix (`forward.group_stats`); all ROUGE sets are generated in one job.
Question field (`question_key`) as OU: forget and retain sets; holdout, real authors and world facts always
use `question`. Metric definitions: open-unlearning's `src/evals/metrics/` and its
`configs/eval/tofu_metrics/*.yaml`; deliberate differences are listed in docs/differences.md.
Data (`data_dir`): a local folder of TOFU JSONL files (one per config: forget01.jsonl, ...) or the hub
dataset locuslab/TOFU (cached by `datasets`); the default is `$CEL_JAX_TOFU_DIR` when set, else the hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from cel_jax import data as D
from cel_jax.evaluation import registry, runner
from cel_jax.evaluation import tofu_suite as _registers_tofu  # noqa: F401  (the metrics and jobs)
from cel_jax.evaluation.tofu_data import QA_SETS, encoder, load_sets, parse_subsets  # noqa: F401  (API)

# Metric names of the issue (OU's names); the default `metrics` list.
TOFU_METRICS = (
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_Q_A_PARA_Prob",
    "forget_Q_A_PERT_Prob",
    "forget_truth_ratio",
    "forget_quality",
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Q_A_PARA_Prob",
    "retain_Q_A_PERT_Prob",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
    "model_utility",
    "mia_loss",
    "mia_zlib",
    "mia_min_k",
    "mia_min_k_plus_plus",
    "mia_gradnorm",
    "mia_reference",
    "privleak",
    "extraction_strength",
    "exact_memorization",
)


def default_config() -> ml_collections.ConfigDict:
    """Defaults of `cel-jax eval --config=configs/eval/tofu.py` and of `evaluate_tofu`."""
    c = ml_collections.ConfigDict()
    c.benchmark = "tofu"
    c.model = "smollm2-135m-instruct"  # HF folder, hub name or alias (CLI only)
    c.dtype = "float32"  # compute dtype of the model (CLI only); committed numbers use float32
    c.data_dir = D.tofu_source()  # folder of <config>.jsonl files or "locuslab/TOFU"; $CEL_JAX_TOFU_DIR
    c.forget_split = "forget01"
    c.holdout_split = config_dict.placeholder(str)  # None: the one that goes with forget_split (holdout01)
    c.question_key = "question"  # or "paraphrased_question" (forget and retain sets, as OU)
    c.template = "chat"  # cel_jax.data.TEMPLATES preset
    c.system_prompt = "You are a helpful assistant."  # chat templates only (OU's default)
    c.max_length = 512  # items longer than this raise (OU applies no truncation on the chat path)
    c.batch_size = 32  # rows per forward batch
    c.generation_batch_size = 128  # one batch for TOFU-mini's 100 prompts; finished rows drop out
    # mia_gradnorm items per call via ghost norms (evaluation/ghost.py); 0: one full gradient per item.
    # 4 keeps the full forget01 suite under 4.8 GB on the CPU (8: 1.2 GB more, 13% less time on this part)
    c.gradnorm_ghost = 4
    c.max_new_tokens = 200
    c.bucket_multiple = 16  # padded lengths are multiples of this
    c.retain_logs_path = config_dict.placeholder(
        str
    )  # retain model's TOFU_EVAL.json (forget_quality, privleak)
    c.reference_model_path = config_dict.placeholder(str)  # model for mia_reference (e.g. the retain model)
    c.max_items = config_dict.placeholder(int)  # first N items of every evaluation set (quick runs)
    # Rows of single sets, "set=rows;set=rows" with python slices, e.g. "retain=0:80:4;ra=0:100:5"
    # (sets: forget, retain, ra, wf, holdout); applied after max_items; recorded in the summary.
    c.subsets = config_dict.placeholder(str)
    c.compat = False  # reference masking (input_ids != pad) and privleak's 0.5 fallback
    c.metrics = TOFU_METRICS
    c.progress = True
    return c


def validate(cfg: Mapping[str, Any]) -> None:
    registry.check_names("tofu", cfg["metrics"])
    if cfg["question_key"] not in ("question", "paraphrased_question"):
        raise ValueError(
            f"question_key must be 'question' or 'paraphrased_question', got {cfg['question_key']!r}"
        )
    D.tofu_splits(cfg["forget_split"])  # raises on an unknown split
    for key in ("batch_size", "generation_batch_size", "max_new_tokens", "bucket_multiple", "max_length"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be positive, got {cfg[key]}")
    if cfg["max_items"] is not None and int(cfg["max_items"]) < 1:
        raise ValueError(f"max_items must be positive (or None for all items), got {cfg['max_items']}")
    if int(cfg.get("gradnorm_ghost", 0)) < 0:
        raise ValueError(
            f"gradnorm_ghost must be >= 0 (0: one full gradient per item), got {cfg['gradnorm_ghost']}"
        )
    parse_subsets(cfg.get("subsets"))


def run(model, tok, cfg: Mapping[str, Any], ref_model=None) -> tuple[dict, dict]:
    """Compute the requested metrics; returns (logs, timings_s). `cfg` is a complete config; metrics that
    cannot be computed (no retain logs, no reference model) get agg_value None and a "note"."""
    validate(cfg)
    return runner.run_suite("tofu", model, tok, cfg, ref_model=ref_model)
