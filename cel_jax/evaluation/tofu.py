"""The TOFU metric suite as open-unlearning (OU) computes it: data sets, forward passes, metric logs.

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

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from cel_jax import data as D
from cel_jax.data.train_data import parse_rows
from cel_jax.evaluation import forward as F
from cel_jax.evaluation import metrics as M
from cel_jax.evaluation import report as R
from cel_jax.evaluation.generate import eos_token_ids

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
# Short set names -> (TOFU config key in data.tofu_splits, log prefix, question field follows question_key).
_QA_SETS = {
    "forget": ("forget_perturbed", "forget", True),
    "retain": ("retain_perturbed", "retain", True),
    "ra": ("real_authors_perturbed", "ra", False),
    "wf": ("world_facts_perturbed", "wf", False),
}
_MIA_TOKEN = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "privleak")
_UTILITY_SETS = {"retain", "gen:retain", "ra", "gen:ra", "wf", "gen:wf"}


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


def needed_sets(names: Any) -> set[str]:
    """The forward / generation jobs the requested metrics need."""
    need: set[str] = set()
    for n in names:
        if n == "model_utility":
            need |= _UTILITY_SETS
        elif n.endswith("_ROUGE"):
            need.add("gen:" + n.split("_")[0])
        elif n in _MIA_TOKEN:
            need |= {"forget", "holdout"}
        elif n == "mia_gradnorm":
            need.add("gradnorm")
        elif n == "mia_reference":
            need |= {"reference", "forget", "holdout"}
        elif n == "forget_quality" or n in ("extraction_strength", "exact_memorization"):
            need.add("forget")
        else:
            need.add(n.split("_")[0])
    return need


def validate(cfg: Mapping[str, Any]) -> None:
    unknown = [m for m in cfg["metrics"] if m not in TOFU_METRICS]
    if unknown:
        raise ValueError(f"unknown TOFU metrics {unknown}; choose from {list(TOFU_METRICS)}")
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


_SUBSET_SETS = ("forget", "retain", "ra", "wf", "holdout")


def parse_subsets(spec: str | None) -> dict[str, str]:
    """'retain=0:80:4;ra=0:100:5' -> {'retain': '0:80:4', 'ra': '0:100:5'} (validated names and slices)."""
    if not spec:
        return {}
    out = {}
    for part in str(spec).split(";"):
        name, sep, rows = (x.strip() for x in part.partition("="))
        if not sep or name not in _SUBSET_SETS or not rows:
            raise ValueError(
                f"subsets {spec!r}: {part!r} is not 'set=rows' with set one of {list(_SUBSET_SETS)}"
            )
        parse_rows(rows, 10**9)  # syntax check; bounds are checked against the set's length
        out[name] = rows
    return out


def _subset(rows: list[dict], spec: str, name: str) -> list[dict]:
    sel = parse_rows(spec, len(rows))
    if max(sel) >= len(rows):
        raise ValueError(f"subsets: {name}={spec} exceeds the {len(rows)} items of the {name} set")
    return [rows[i] for i in sel]


def load_sets(cfg: Mapping[str, Any], need: set[str]) -> dict[str, list[dict]]:
    """Rows of the TOFU configs the jobs need, cut to max_items."""
    splits = D.tofu_splits(cfg["forget_split"])
    if cfg["holdout_split"]:
        splits["holdout"] = cfg["holdout_split"]
    qk = cfg["question_key"]
    extra = (qk,) if qk != "question" else ()
    rows = {}
    for short, (key, _, follows) in _QA_SETS.items():
        if (
            short in need
            or f"gen:{short}" in need
            or (short == "forget" and need & {"gradnorm", "reference"})
        ):
            rows[short] = D.load_qa(cfg["data_dir"], splits[key], extra_fields=extra if follows else ())
    if need & {"holdout", "gradnorm", "reference"}:
        rows["holdout"] = D.load_qa(cfg["data_dir"], splits["holdout"], schema="qa")
    n = cfg["max_items"]
    rows = {k: v[:n] if n else v for k, v in rows.items()}
    for name, spec in parse_subsets(cfg.get("subsets")).items():
        if name in rows:
            rows[name] = _subset(rows[name], spec, name)
    return rows


def encoder(tok, cfg: Mapping[str, Any]) -> Callable[..., dict]:
    """enc(question, answer, generate=False) -> item, with the config's template, system prompt and length."""
    template = D.make_template(cfg["template"])
    if template.apply_chat_template and cfg["system_prompt"] is not None:
        template = dataclasses.replace(template, system_prompt=cfg["system_prompt"])

    def enc(q: str, a: str, generate: bool = False) -> dict:
        return D.encode_qa(tok, q, a, template, max_length=int(cfg["max_length"]), generate=generate)

    return enc


def run(model, tok, cfg: Mapping[str, Any], ref_model=None) -> tuple[dict, dict]:
    """Compute the requested metrics; returns (logs, timings_s). `cfg` is a complete config; metrics that
    cannot be computed (no retain logs, no reference model) get agg_value None and a "note"."""
    validate(cfg)
    names = list(cfg["metrics"])
    timings: dict[str, float] = {}
    notes: dict[str, str] = {}
    if "mia_reference" in names and ref_model is None:
        notes["mia_reference"] = "no reference model (reference_model_path); OU requires one"
    need = needed_sets([n for n in names if n not in notes])
    retain_logs = None
    if cfg["retain_logs_path"] and need & {"forget", "holdout"}:
        require = [
            k for k, m in (("forget_truth_ratio", "forget_quality"), ("mia_min_k", "privleak")) if m in names
        ]
        retain_logs = R.load_retain_logs(cfg["retain_logs_path"], require=require)

    t = F.clock()
    rows = load_sets(cfg, need)
    enc = encoder(tok, cfg)
    qk, pad = cfg["question_key"], D.pad_id_of(tok)
    groups, gen_items = {}, {}
    for short, (_, _, follows) in _QA_SETS.items():
        if short not in rows:
            continue
        q_of = (lambda r: r[qk]) if follows else (lambda r: r["question"])
        if short in need:
            fields = ["answer"] + (["paraphrased_answer"] if "paraphrased_answer" in rows[short][0] else [])
            groups[short] = [
                [enc(q_of(r), r[f]) for f in fields] + [enc(q_of(r), p) for p in r["perturbed_answer"]]
                for r in rows[short]
            ]
        if f"gen:{short}" in need:
            gen_items[short] = [enc(q_of(r), r["answer"], generate=True) for r in rows[short]]
    forget_ans = [enc(r[qk], r["answer"]) for r in rows.get("forget", [])]
    holdout = [enc(r["question"], r["answer"]) for r in rows.get("holdout", [])]
    timings["data + tokenisation"] = F.elapsed(t)

    kw = dict(
        batch_size=int(cfg["batch_size"]),
        multiple=int(cfg["bucket_multiple"]),
        compat=bool(cfg["compat"]),
        progress=bool(cfg["progress"]),
    )
    stats: dict[str, list] = {}
    want_full = any(n in names for n in (*_MIA_TOKEN, "extraction_strength", "exact_memorization"))
    for short, desc in (
        ("forget", "forget: Q_A_Prob/PARA/PERT, truth ratio, MIA, EM, ES"),
        ("retain", "retain: Q_A_Prob/PARA/PERT, truth ratio"),
        ("ra", "real authors: Q_A_Prob, normalised, truth ratio"),
        ("wf", "world facts: Q_A_Prob, normalised, truth ratio"),
    ):
        if short in groups:
            t = F.clock()
            n_full = int(want_full) if short == "forget" else 0
            stats[short] = F.group_stats(model, groups[short], pad, n_full=n_full, desc=desc, **kw)
            timings[f"forward: {short}"] = F.elapsed(t)
    if "holdout" in need:
        t = F.clock()
        stats["holdout"] = F.item_stats(
            model, holdout, pad, full=want_full, desc="holdout: MIA non-members", **kw
        )
        timings["forward: holdout"] = F.elapsed(t)

    logs: dict[str, Any] = {}
    for short in ("forget", "retain", "ra", "wf"):
        if short in stats:
            logs.update(_qa_logs(short, stats[short], has_para="paraphrased_answer" in rows[short][0]))

    if gen_items:
        t = F.clock()
        order = [s for s in ("forget", "retain", "ra", "wf") if s in gen_items]
        flat = [it for s in order for it in gen_items[s]]
        outs = F.generate_ids(
            model,
            [it["input_ids"] for it in flat],
            eos_ids=eos_token_ids(model, tok),
            pad_id=pad,
            max_new_tokens=int(cfg["max_new_tokens"]),
            batch_size=int(cfg["generation_batch_size"]),
            compat=bool(cfg["compat"]),
            desc="generation: " + ", ".join(f"{s}_Q_A_ROUGE" for s in order),
            progress=bool(cfg["progress"]),
        )
        start = 0
        for s in order:
            items = gen_items[s]
            gts, gens, inputs = F.rouge_texts(tok, items, outs[start : start + len(items)])
            logs[f"{s}_Q_A_ROUGE"] = M.rouge_result(gts, gens, inputs, "rougeL_recall")
            start += len(items)
        timings["generation (ROUGE)"] = F.elapsed(t)

    if "model_utility" in names:
        logs["model_utility"] = M.model_utility_result(
            {k: logs[k]["agg_value"] for k in M.MODEL_UTILITY_KEYS}
        )

    if "forget" in stats and "forget_quality" in names:
        retain_tr = R.retain_truth_ratios(retain_logs) if retain_logs else None
        logs["forget_quality"] = M.forget_quality_result(M.scores_of(logs["forget_truth_ratio"]), retain_tr)
        if retain_tr is None:
            notes["forget_quality"] = (
                "no retain logs (retain_logs_path): the retain model's truth ratios are needed"
            )

    if "holdout" in stats and want_full:
        f_rows = [g[0] for g in stats["forget"]]
        logs.update(_mia_logs(tok, f_rows, stats["holdout"], forget_ans, holdout))
        if "privleak" in names:
            logs["privleak"] = M.privleak_result(
                logs["mia_min_k"]["auc"], R.retain_mia_auc(retain_logs), compat=bool(cfg["compat"])
            )
            if retain_logs is None and cfg["compat"]:
                logs["privleak"]["note"] = "compat: no retain logs, OU's fallback reference AUC 0.5 used"
    if "forget" in stats and want_full:
        correct = [g[0]["correct"] for g in stats["forget"]]
        logs["exact_memorization"] = M.score_result([M.exact_memorization_score(c) for c in correct])
        logs["extraction_strength"] = M.score_result([M.extraction_strength_score(c) for c in correct])

    if "gradnorm" in need:
        t = F.clock()
        ghost = int(cfg.get("gradnorm_ghost", 0))
        how = f"{ghost} per call (ghost norms)" if ghost else "batch 1"
        scores = F.gradnorm_scores(
            model,
            forget_ans + holdout,
            pad,
            ghost=ghost,
            compat=bool(cfg["compat"]),
            desc=f"mia_gradnorm: forget + holdout, {how}",
            progress=bool(cfg["progress"]),
        )
        logs["mia_gradnorm"] = M.mia_result(scores[: len(forget_ans)], scores[len(forget_ans) :])
        timings["mia_gradnorm"] = F.elapsed(t)

    if "reference" in need:
        t = F.clock()
        f_ref = F.item_stats(ref_model, forget_ans, pad, desc="mia_reference: forget (reference model)", **kw)
        h_ref = F.item_stats(ref_model, holdout, pad, desc="mia_reference: holdout (reference model)", **kw)
        f_rows, h_rows = [g[0] for g in stats["forget"]], stats["holdout"]
        logs["mia_reference"] = M.mia_result(
            [M.reference_score(a["avg_loss"], b["avg_loss"]) for a, b in zip(f_rows, f_ref, strict=True)],
            [M.reference_score(a["avg_loss"], b["avg_loss"]) for a, b in zip(h_rows, h_ref, strict=True)],
        )
        timings["mia_reference"] = F.elapsed(t)

    for name, note in notes.items():
        if name in names:
            logs[name] = {**logs.get(name, {"agg_value": None}), "note": note}
    return logs, timings


def _qa_logs(prefix: str, groups: list[list[dict]], has_para: bool) -> dict[str, Any]:
    """Probability, perturbed probability, normalised probability and truth ratio of one QA set."""
    logs = {f"{prefix}_Q_A_Prob": M.probability_result([g[0]["avg_loss"] for g in groups])}
    first_wrong = 1
    if has_para:
        logs[f"{prefix}_Q_A_PARA_Prob"] = M.probability_result([g[1]["avg_loss"] for g in groups])
        first_wrong = 2
    pert = M.probability_result([[r["avg_loss"] for r in g[first_wrong:]] for g in groups])
    logs[f"{prefix}_Q_A_PERT_Prob"] = pert
    wrong = pert["value_by_index"]
    if prefix == "forget":
        correct = logs["forget_Q_A_PARA_Prob"]["value_by_index"]
        logs["forget_truth_ratio"] = M.truth_ratio_result(correct, wrong, "closer_to_1_better")
    elif has_para:
        correct = logs[f"{prefix}_Q_A_PARA_Prob"]["value_by_index"]
        logs[f"{prefix}_Truth_Ratio"] = M.truth_ratio_result(correct, wrong, "true_better")
    else:
        correct = logs[f"{prefix}_Q_A_Prob"]["value_by_index"]
        logs[f"{prefix}_Q_A_Prob_normalised"] = M.probability_w_options_result(correct, wrong)
        logs[f"{prefix}_Truth_Ratio"] = M.truth_ratio_result(correct, wrong, "true_better")
    return logs


def _mia_logs(tok, f_rows: list[dict], h_rows: list[dict], f_items: list, h_items: list) -> dict[str, Any]:
    """LOSS, ZLib, Min-K and Min-K++ attacks (forget = members, holdout = non-members)."""
    cleanup = bool(getattr(tok, "clean_up_tokenization_spaces", False))

    def zlib(rows, items):
        texts = [F.decode(tok, F.target_ids(it), cleanup=cleanup) for it in items]
        return [M.zlib_score(r["avg_loss"], t) for r, t in zip(rows, texts, strict=True)]

    return {
        "mia_loss": M.mia_result([r["avg_loss"] for r in f_rows], [r["avg_loss"] for r in h_rows]),
        "mia_zlib": M.mia_result(zlib(f_rows, f_items), zlib(h_rows, h_items)),
        "mia_min_k": M.mia_result(
            [M.min_k_score(r["token_logp"]) for r in f_rows], [M.min_k_score(r["token_logp"]) for r in h_rows]
        ),
        "mia_min_k_plus_plus": M.mia_result(
            [M.min_k_plus_plus_score(r["token_logp"], r["mu"], r["sigma2"]) for r in f_rows],
            [M.min_k_plus_plus_score(r["token_logp"], r["mu"], r["sigma2"]) for r in h_rows],
        ),
    }
