"""The TOFU suite as data: its data step, jobs (pre-computations) and metrics, registered for `runner`.

Jobs (names are what metrics `need`): "forget", "retain", "ra", "wf" (forward statistics of the answer,
paraphrased and perturbed answers of each question, sharing the prompt's KV prefix), "holdout" (MIA
non-members), "token_arrays" (the forget / holdout forwards also keep the per-token arrays of the MIA,
EM and ES scores), "gen:<set>" (greedy generations for ROUGE; every set in one job), "gradnorm",
"reference" (the reference model on forget + holdout). Each job's results go to `run.values`.
"""

from __future__ import annotations

from typing import Any

from cel_jax import data as D
from cel_jax.evaluation import batched_generation, common, forward, registry, text
from cel_jax.evaluation import gradnorm as G
from cel_jax.evaluation import metrics as M
from cel_jax.evaluation import report as R
from cel_jax.evaluation.generate import eos_token_ids
from cel_jax.evaluation.runner import Run
from cel_jax.evaluation.tofu_data import QA_SETS, encoder, load_sets

SUITE = "tofu"
_FORWARD_DESC = {
    "forget": "forget: Q_A_Prob/PARA/PERT, truth ratio, MIA, EM, ES",
    "retain": "retain: Q_A_Prob/PARA/PERT, truth ratio",
    "ra": "real authors: Q_A_Prob, normalised, truth ratio",
    "wf": "world facts: Q_A_Prob, normalised, truth ratio",
}


# ----------------------------------------------------------------------------------------------------------
# Data step and jobs.


@registry.register_prepare(SUITE)
def prepare(run: Run) -> None:
    """Rows of the sets the jobs need, tokenised: answer groups, generation prompts, forget / holdout."""
    cfg, need = run.cfg, run.need
    rows = load_sets(cfg, need)
    enc = encoder(run.tok, cfg)
    qk = cfg["question_key"]
    groups, gen_items = {}, {}
    for short, (_, _, follows) in QA_SETS.items():
        if short not in rows:
            continue
        field = qk if follows else "question"
        if short in need:
            fields = ["answer"] + (["paraphrased_answer"] if "paraphrased_answer" in rows[short][0] else [])
            groups[short] = [
                [enc(r[field], r[f]) for f in fields] + [enc(r[field], p) for p in r["perturbed_answer"]]
                for r in rows[short]
            ]
        if f"gen:{short}" in need:
            gen_items[short] = [enc(r[field], r["answer"], generate=True) for r in rows[short]]
    run.values.update(
        rows=rows,
        groups=groups,
        gen_items=gen_items,
        forget_items=[enc(r[qk], r["answer"]) for r in rows.get("forget", [])],
        holdout_items=[enc(r["question"], r["answer"]) for r in rows.get("holdout", [])],
        pad=D.pad_id_of(run.tok),
    )


def _forward_job(short: str):
    def job(run: Run) -> None:
        n_full = int("token_arrays" in run.need) if short == "forget" else 0
        run.values[f"stats:{short}"] = forward.group_stats(
            run.model,
            run.values["groups"][short],
            run.values["pad"],
            n_full=n_full,
            desc=_FORWARD_DESC[short],
            **common.forward_kw(run.cfg),
        )

    return job


@registry.register_job(SUITE, "token_arrays")
def token_arrays(run: Run) -> None:
    """A flag, no work of its own: the forget / holdout forwards keep their per-token arrays."""


for _short in QA_SETS:
    registry.register_job(SUITE, _short, timing=f"forward: {_short}")(_forward_job(_short))


@registry.register_job(SUITE, "holdout", timing="forward: holdout")
def holdout_forward(run: Run) -> None:
    run.values["stats:holdout"] = forward.item_stats(
        run.model,
        run.values["holdout_items"],
        run.values["pad"],
        full="token_arrays" in run.need,
        desc="holdout: MIA non-members",
        **common.forward_kw(run.cfg),
    )


@registry.register_job(
    SUITE, "generation", triggers=[f"gen:{s}" for s in QA_SETS], timing="generation (ROUGE)"
)
def generation(run: Run) -> None:
    """One generation call for every ROUGE set; (ground truths, generations, inputs) per set."""
    cfg, gen_items = run.cfg, run.values["gen_items"]
    order = [s for s in QA_SETS if s in gen_items]
    flat = [it for s in order for it in gen_items[s]]
    outs = batched_generation.generate_ids(
        run.model,
        [it["input_ids"] for it in flat],
        eos_ids=eos_token_ids(run.model, run.tok),
        pad_id=run.values["pad"],
        max_new_tokens=int(cfg["max_new_tokens"]),
        batch_size=int(cfg["generation_batch_size"]),
        compat=bool(cfg["compat"]),
        desc="generation: " + ", ".join(f"{s}_Q_A_ROUGE" for s in order),
        progress=bool(cfg["progress"]),
    )
    start = 0
    for s in order:
        items = gen_items[s]
        run.values[f"rouge_texts:{s}"] = text.rouge_texts(run.tok, items, outs[start : start + len(items)])
        start += len(items)


@registry.register_job(SUITE, "gradnorm", timing="mia_gradnorm")
def gradnorm(run: Run) -> None:
    ghost = int(run.cfg.get("gradnorm_ghost", 0))
    how = f"{ghost} per call (ghost norms)" if ghost else "batch 1"
    f_items, h_items = run.values["forget_items"], run.values["holdout_items"]
    scores = G.gradnorm_scores(
        run.model,
        f_items + h_items,
        run.values["pad"],
        ghost=ghost,
        compat=bool(run.cfg["compat"]),
        desc=f"mia_gradnorm: forget + holdout, {how}",
        progress=bool(run.cfg["progress"]),
    )
    run.values["gradnorm"] = (scores[: len(f_items)], scores[len(f_items) :])


@registry.register_job(SUITE, "reference", timing="mia_reference")
def reference(run: Run) -> None:
    kw, pad = common.forward_kw(run.cfg), run.values["pad"]
    run.values["reference"] = tuple(
        forward.item_stats(
            run.ref_model, run.values[f"{s}_items"], pad, desc=f"mia_reference: {s} (reference model)", **kw
        )
        for s in ("forget", "holdout")
    )


# ----------------------------------------------------------------------------------------------------------
# Metrics.


def qa_logs(run: Run, prefix: str) -> dict[str, Any]:
    """Probability, paraphrased / perturbed probability, normalised probability and truth ratio of one QA
    set (all computed once per run, from the set's forward statistics)."""
    key = f"qa_logs:{prefix}"
    if key in run.values:
        return run.values[key]
    groups = run.values[f"stats:{prefix}"]
    has_para = "paraphrased_answer" in run.values["rows"][prefix][0]
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
    run.values[key] = logs
    return logs


def _qa_metric(prefix: str, name: str):
    return lambda run: qa_logs(run, prefix).get(name)


for _short, _kinds in (
    ("forget", ("Q_A_Prob", "Q_A_PARA_Prob", "Q_A_PERT_Prob", "truth_ratio")),
    ("retain", ("Q_A_Prob", "Q_A_PARA_Prob", "Q_A_PERT_Prob", "Truth_Ratio")),
    ("ra", ("Q_A_Prob", "Q_A_PERT_Prob", "Q_A_Prob_normalised", "Truth_Ratio")),
    ("wf", ("Q_A_Prob", "Q_A_PERT_Prob", "Q_A_Prob_normalised", "Truth_Ratio")),
):
    for _kind in _kinds:
        _name = f"{_short}_{_kind}"
        registry.register_metric(SUITE, _name, needs=(_short,))(_qa_metric(_short, _name))


def _rouge_metric(short: str):
    return lambda run: M.rouge_result(*run.values[f"rouge_texts:{short}"], "rougeL_recall")


for _short in QA_SETS:
    registry.register_metric(SUITE, f"{_short}_Q_A_ROUGE", needs=(f"gen:{_short}",))(_rouge_metric(_short))


@registry.register_metric(SUITE, "model_utility", uses=M.MODEL_UTILITY_KEYS)
def model_utility(run: Run):
    return M.model_utility_result({k: run.metric(k)["agg_value"] for k in M.MODEL_UTILITY_KEYS})


@registry.register_metric(
    SUITE, "forget_quality", uses=("forget_truth_ratio",), retain_keys=("forget_truth_ratio",)
)
def forget_quality(run: Run):
    retain_tr = R.retain_truth_ratios(run.retain_logs) if run.retain_logs else None
    result = M.forget_quality_result(M.scores_of(run.metric("forget_truth_ratio")), retain_tr)
    if retain_tr is None:
        result["note"] = "no retain logs (retain_logs_path): the retain model's truth ratios are needed"
    return result


# The token-level MIA attacks (forget = members, holdout = non-members) and memorisation scores.
_MIA_NEEDS = ("forget", "holdout", "token_arrays")


def _mia(run: Run, score) -> dict[str, Any]:
    """mia_result of `score(row, item)` on the forget (members) and holdout (non-members) rows."""
    f_rows = [g[0] for g in run.values["stats:forget"]]
    h_rows = run.values["stats:holdout"]
    return M.mia_result(
        [score(r, it) for r, it in zip(f_rows, run.values["forget_items"], strict=True)],
        [score(r, it) for r, it in zip(h_rows, run.values["holdout_items"], strict=True)],
    )


@registry.register_metric(SUITE, "mia_loss", needs=_MIA_NEEDS)
def mia_loss(run: Run):
    return _mia(run, lambda r, it: r["avg_loss"])


@registry.register_metric(SUITE, "mia_zlib", needs=_MIA_NEEDS)
def mia_zlib(run: Run):
    cleanup = bool(getattr(run.tok, "clean_up_tokenization_spaces", False))

    def score(r, it):
        return M.zlib_score(r["avg_loss"], text.decode(run.tok, text.target_ids(it), cleanup=cleanup))

    return _mia(run, score)


@registry.register_metric(SUITE, "mia_min_k", needs=_MIA_NEEDS)
def mia_min_k(run: Run):
    return _mia(run, lambda r, it: M.min_k_score(r["token_logp"]))


@registry.register_metric(SUITE, "mia_min_k_plus_plus", needs=_MIA_NEEDS)
def mia_min_k_plus_plus(run: Run):
    return _mia(run, lambda r, it: M.min_k_plus_plus_score(r["token_logp"], r["mu"], r["sigma2"]))


@registry.register_metric(SUITE, "mia_gradnorm", needs=("gradnorm",))
def mia_gradnorm(run: Run):
    return M.mia_result(*run.values["gradnorm"])


def _no_reference_model(run: Run) -> str | None:
    return None if run.ref_model is not None else "no reference model (reference_model_path); OU requires one"


@registry.register_metric(
    SUITE, "mia_reference", needs=("reference", "forget", "holdout"), unavailable=_no_reference_model
)
def mia_reference(run: Run):
    f_ref, h_ref = run.values["reference"]
    f_rows, h_rows = [g[0] for g in run.values["stats:forget"]], run.values["stats:holdout"]
    return M.mia_result(
        [M.reference_score(a["avg_loss"], b["avg_loss"]) for a, b in zip(f_rows, f_ref, strict=True)],
        [M.reference_score(a["avg_loss"], b["avg_loss"]) for a, b in zip(h_rows, h_ref, strict=True)],
    )


@registry.register_metric(SUITE, "privleak", uses=("mia_min_k",), retain_keys=("mia_min_k",))
def privleak(run: Run):
    return common.privleak(run)


def _forget_correct(run: Run) -> list:
    return [g[0]["correct"] for g in run.values["stats:forget"]]


@registry.register_metric(SUITE, "exact_memorization", needs=("forget", "token_arrays"))
def exact_memorization(run: Run):
    return M.score_result([M.exact_memorization_score(c) for c in _forget_correct(run)])


@registry.register_metric(SUITE, "extraction_strength", needs=("forget", "token_arrays"))
def extraction_strength(run: Run):
    return M.score_result([M.extraction_strength_score(c) for c in _forget_correct(run)])
