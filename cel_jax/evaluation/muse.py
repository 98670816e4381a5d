"""The MUSE metric suite as open-unlearning (OU) computes it, on the published MUSE layout.

Data: `muse-bench/MUSE-News` / `MUSE-Books` on the hub, or a local folder of `<config>/<split>.jsonl`
(e.g. tests/fixtures/muse): `verbmem/forget` (prompt, gt), `knowmem/{forget,retain}_qa` (+ `_icl` shots),
`privleak/{forget,holdout}` (text).
* forget_verbmem_ROUGE: greedy continuation of `prompt` (128 new tokens), ROUGE-L F1 against the full `gt`.
* forget/retain_knowmem_ROUGE: all ICL shots + the question in the tag template ("Question: ...\\nAnswer: "),
  32 new tokens, cut at the stop strings, ROUGE-L F1.
* privleak: Min-K 40% (`mia_min_k`, forget = members vs holdout) against the retain model's AUC.
* extraction_strength / exact_memorization: on verbmem prompt + gt (labels on gt only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from cel_jax import data as D
from cel_jax.evaluation import forward as F
from cel_jax.evaluation import metrics as M
from cel_jax.evaluation import report as R
from cel_jax.evaluation.generate import eos_token_ids

MUSE_METRICS = (
    "forget_verbmem_ROUGE",
    "forget_knowmem_ROUGE",
    "retain_knowmem_ROUGE",
    "privleak",
    "extraction_strength",
    "exact_memorization",
)
ALLOWED = (*MUSE_METRICS, "mia_min_k")
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
    unknown = [m for m in cfg["metrics"] if m not in ALLOWED]
    if unknown:
        raise ValueError(f"unknown MUSE metrics {unknown}; choose from {list(ALLOWED)}")
    for key in ("batch_size", "generation_batch_size", "verbmem_max_new_tokens", "knowmem_max_new_tokens"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be positive, got {cfg[key]}")
    if cfg["max_items"] is not None and int(cfg["max_items"]) < 1:
        raise ValueError(f"max_items must be positive (or None for all items), got {cfg['max_items']}")


def run(model, tok, cfg: Mapping[str, Any], ref_model=None) -> tuple[dict, dict]:
    """Compute the requested MUSE metrics; returns (logs, timings_s). Missing values carry a "note"."""
    del ref_model  # MUSE's privleak reads the retrained model's AUC from the retain logs
    validate(cfg)
    names = list(cfg["metrics"])
    timings: dict[str, float] = {}
    retain_logs = None
    if cfg["retain_logs_path"] and "privleak" in names:
        retain_logs = R.load_retain_logs(cfg["retain_logs_path"], require=("mia_min_k",))
    n, src = cfg["max_items"], cfg["data_dir"]

    def rows(config: str, split: str, cut: bool = True) -> list[dict]:
        r = D.load_muse(src, config, split)
        return r[:n] if (n and cut) else r

    t = F.clock()
    max_len = int(cfg["max_length"])
    template = D.make_template(cfg["template"])
    too_long = "error" if template.apply_chat_template else "truncate"  # OU truncates only tag prompts
    pad = D.pad_id_of(tok)
    need_verbmem_fwd = any(m in names for m in ("extraction_strength", "exact_memorization"))
    need_mia = any(m in names for m in ("privleak", "mia_min_k"))
    verbmem = rows("verbmem", "forget") if (need_verbmem_fwd or "forget_verbmem_ROUGE" in names) else []
    knowmem: dict[str, list[dict]] = {}
    for side in ("forget", "retain"):
        if f"{side}_knowmem_ROUGE" in names:
            shots = rows("knowmem", f"{side}_qa_icl", cut=False)
            knowmem[side] = D.encode_qa_rows(
                tok,
                rows("knowmem", f"{side}_qa"),
                template,
                fewshot_rows=shots,
                max_length=int(cfg["knowmem_max_length"]),
                on_too_long=too_long,
                generate=True,
            )
    if need_mia:
        mia = {
            s: [D.encode_completion(tok, "", r["text"], max_length=max_len) for r in rows("privleak", s)]
            for s in ("forget", "holdout")
        }
    timings["data + tokenisation"] = F.elapsed(t)

    logs: dict[str, Any] = {}
    kw = dict(
        batch_size=int(cfg["batch_size"]),
        multiple=int(cfg["bucket_multiple"]),
        compat=bool(cfg["compat"]),
        progress=bool(cfg["progress"]),
    )
    gkw = dict(
        eos_ids=eos_token_ids(model, tok),
        pad_id=pad,
        batch_size=int(cfg["generation_batch_size"]),
        compat=bool(cfg["compat"]),
        progress=bool(cfg["progress"]),
    )
    if "forget_verbmem_ROUGE" in names:
        t = F.clock()
        items = [
            D.encode_completion(
                tok, r["prompt"], r["gt"], max_length=max_len, insert_space=True, generate=True
            )
            for r in verbmem
        ]
        outs = F.generate_ids(
            model,
            [it["input_ids"] for it in items],
            max_new_tokens=int(cfg["verbmem_max_new_tokens"]),
            desc="generation: forget_verbmem_ROUGE",
            **gkw,
        )
        logs["forget_verbmem_ROUGE"] = M.rouge_result(*F.rouge_texts(tok, items, outs), "rougeL_f1")
        timings["generation: verbmem"] = F.elapsed(t)
    if knowmem:
        t = F.clock()
        order = list(knowmem)
        flat = [it for s in order for it in knowmem[s]]
        outs = F.generate_ids(
            model,
            [it["input_ids"] for it in flat],
            max_new_tokens=int(cfg["knowmem_max_new_tokens"]),
            desc="generation: " + ", ".join(f"{s}_knowmem_ROUGE" for s in order),
            **gkw,
        )
        start = 0
        for s in order:
            items = knowmem[s]
            texts = F.rouge_texts(tok, items, outs[start : start + len(items)], tuple(cfg["stopwords"]))
            logs[f"{s}_knowmem_ROUGE"] = M.rouge_result(*texts, "rougeL_f1")
            start += len(items)
        timings["generation: knowmem"] = F.elapsed(t)
    if need_verbmem_fwd:
        t = F.clock()
        items = [
            D.encode_completion(tok, r["prompt"], r["gt"], max_length=max_len, insert_space=True)
            for r in verbmem
        ]
        st = F.item_stats(
            model, items, pad, full=True, desc="verbmem: extraction_strength, exact_memorization", **kw
        )
        logs["exact_memorization"] = M.score_result([M.exact_memorization_score(r["correct"]) for r in st])
        logs["extraction_strength"] = M.score_result([M.extraction_strength_score(r["correct"]) for r in st])
        timings["forward: verbmem"] = F.elapsed(t)
    if need_mia:
        t = F.clock()
        scores = {
            s: [
                M.min_k_score(r["token_logp"])
                for r in F.item_stats(model, mia[s], pad, full=True, desc=f"privleak/{s}: mia_min_k", **kw)
            ]
            for s in ("forget", "holdout")
        }
        logs["mia_min_k"] = M.mia_result(scores["forget"], scores["holdout"])
        if "privleak" in names:
            logs["privleak"] = M.privleak_result(
                logs["mia_min_k"]["auc"], R.retain_mia_auc(retain_logs), compat=bool(cfg["compat"])
            )
            if retain_logs is None and cfg["compat"]:
                logs["privleak"]["note"] = "compat: no retain logs, OU's fallback reference AUC 0.5 used"
        timings["forward: privleak"] = F.elapsed(t)
    return logs, timings
