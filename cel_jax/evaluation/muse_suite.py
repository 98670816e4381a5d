"""The MUSE suite as data: its data step, jobs (pre-computations) and metrics, registered for `runner`.

Jobs (names are what metrics `need`): "gen:verbmem" (greedy continuations of the verbmem prompts),
"gen:knowmem:<side>" (knowmem answers, both sides in one job), "verbmem" (forward of verbmem prompt + gt
with the per-token arrays of EM / ES), "mia" (Min-K scores of the privleak forget / holdout texts).
"""

from __future__ import annotations

from typing import Any

from cel_jax import data as D
from cel_jax.evaluation import batched_generation, common, forward, registry, text
from cel_jax.evaluation import metrics as M
from cel_jax.evaluation.generate import eos_token_ids
from cel_jax.evaluation.runner import Run

SUITE = "muse"
KNOWMEM_SIDES = ("forget", "retain")


@registry.register_prepare(SUITE)
def prepare(run: Run) -> None:
    """Rows of the MUSE configs the jobs need, cut to max_items (ICL shots are kept whole), tokenised."""
    cfg, tok, need = run.cfg, run.tok, run.need
    n, src = cfg["max_items"], cfg["data_dir"]

    def rows(config: str, split: str, cut: bool = True) -> list[dict]:
        r = D.load_muse(src, config, split)
        return r[:n] if (n and cut) else r

    template = D.make_template(cfg["template"])
    too_long = "error" if template.apply_chat_template else "truncate"  # OU truncates only tag prompts
    verbmem = rows("verbmem", "forget") if need & {"verbmem", "gen:verbmem"} else []
    knowmem: dict[str, list[dict]] = {}
    for side in KNOWMEM_SIDES:
        if f"gen:knowmem:{side}" in need:
            knowmem[side] = D.encode_qa_rows(
                tok,
                rows("knowmem", f"{side}_qa"),
                template,
                fewshot_rows=rows("knowmem", f"{side}_qa_icl", cut=False),
                max_length=int(cfg["knowmem_max_length"]),
                on_too_long=too_long,
                generate=True,
            )
    mia = {}
    if "mia" in need:
        max_len = int(cfg["max_length"])
        mia = {
            s: [D.encode_completion(tok, "", r["text"], max_length=max_len) for r in rows("privleak", s)]
            for s in ("forget", "holdout")
        }
    run.values.update(verbmem=verbmem, knowmem=knowmem, mia=mia, pad=D.pad_id_of(tok))


def _generate(run: Run, items: list[dict], max_new_tokens: int, desc: str) -> list[list[int]]:
    cfg = run.cfg
    return batched_generation.generate_ids(
        run.model,
        [it["input_ids"] for it in items],
        eos_ids=eos_token_ids(run.model, run.tok),
        pad_id=run.values["pad"],
        max_new_tokens=max_new_tokens,
        batch_size=int(cfg["generation_batch_size"]),
        compat=bool(cfg["compat"]),
        desc=desc,
        progress=bool(cfg["progress"]),
    )


def _verbmem_items(run: Run, generate: bool) -> list[dict]:
    """verbmem prompt + gt (labels on gt), with OU's inserted space; `generate`: the prompt alone."""
    max_len = int(run.cfg["max_length"])
    return [
        D.encode_completion(
            run.tok, r["prompt"], r["gt"], max_length=max_len, insert_space=True, generate=generate
        )
        for r in run.values["verbmem"]
    ]


@registry.register_job(SUITE, "gen:verbmem", timing="generation: verbmem")
def generate_verbmem(run: Run) -> None:
    items = _verbmem_items(run, generate=True)
    n_new = int(run.cfg["verbmem_max_new_tokens"])
    outs = _generate(run, items, n_new, "generation: forget_verbmem_ROUGE")
    run.values["rouge_texts:verbmem"] = text.rouge_texts(run.tok, items, outs)


@registry.register_job(
    SUITE,
    "gen:knowmem",
    triggers=[f"gen:knowmem:{s}" for s in KNOWMEM_SIDES],
    timing="generation: knowmem",
)
def generate_knowmem(run: Run) -> None:
    """One generation call for both knowmem sides, cut at the stop strings."""
    knowmem = run.values["knowmem"]
    order = list(knowmem)
    flat = [it for s in order for it in knowmem[s]]
    n_new = int(run.cfg["knowmem_max_new_tokens"])
    outs = _generate(run, flat, n_new, "generation: " + ", ".join(f"{s}_knowmem_ROUGE" for s in order))
    start = 0
    for s in order:
        items = knowmem[s]
        chunk = outs[start : start + len(items)]
        run.values[f"rouge_texts:knowmem:{s}"] = text.rouge_texts(
            run.tok, items, chunk, tuple(run.cfg["stopwords"])
        )
        start += len(items)


@registry.register_job(SUITE, "verbmem", timing="forward: verbmem")
def verbmem_forward(run: Run) -> None:
    run.values["stats:verbmem"] = forward.item_stats(
        run.model,
        _verbmem_items(run, generate=False),
        run.values["pad"],
        full=True,
        desc="verbmem: extraction_strength, exact_memorization",
        **common.forward_kw(run.cfg),
    )


@registry.register_job(SUITE, "mia", timing="forward: privleak")
def mia_forward(run: Run) -> None:
    kw = common.forward_kw(run.cfg)
    pad, items = run.values["pad"], run.values["mia"]

    def scores(s: str) -> list[float]:
        rows = forward.item_stats(run.model, items[s], pad, full=True, desc=f"privleak/{s}: mia_min_k", **kw)
        return [M.min_k_score(r["token_logp"]) for r in rows]

    run.values["min_k"] = {s: scores(s) for s in ("forget", "holdout")}


# ----------------------------------------------------------------------------------------------------------
# Metrics.


@registry.register_metric(SUITE, "forget_verbmem_ROUGE", needs=("gen:verbmem",))
def forget_verbmem_rouge(run: Run) -> dict[str, Any]:
    return M.rouge_result(*run.values["rouge_texts:verbmem"], "rougeL_f1")


def _knowmem_metric(side: str):
    return lambda run: M.rouge_result(*run.values[f"rouge_texts:knowmem:{side}"], "rougeL_f1")


for _side in KNOWMEM_SIDES:
    registry.register_metric(SUITE, f"{_side}_knowmem_ROUGE", needs=(f"gen:knowmem:{_side}",))(
        _knowmem_metric(_side)
    )


@registry.register_metric(SUITE, "mia_min_k", needs=("mia",))
def mia_min_k(run: Run) -> dict[str, Any]:
    return M.mia_result(run.values["min_k"]["forget"], run.values["min_k"]["holdout"])


@registry.register_metric(SUITE, "privleak", uses=("mia_min_k",), retain_keys=("mia_min_k",))
def privleak(run: Run) -> dict[str, Any]:
    return common.privleak(run)


@registry.register_metric(SUITE, "extraction_strength", needs=("verbmem",))
def extraction_strength(run: Run) -> dict[str, Any]:
    return M.score_result([M.extraction_strength_score(r["correct"]) for r in run.values["stats:verbmem"]])


@registry.register_metric(SUITE, "exact_memorization", needs=("verbmem",))
def exact_memorization(run: Run) -> dict[str, Any]:
    return M.score_result([M.exact_memorization_score(r["correct"]) for r in run.values["stats:verbmem"]])
