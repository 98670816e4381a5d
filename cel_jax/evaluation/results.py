"""OU's statistics (AUC, KS p-value, harmonic mean, truth-ratio aggregators) and OU's result layouts
`{"agg_value": float | None, "value_by_index": {"0": {...}, ...}}` under OU's field names (host side,
numpy / scipy). Per-item scores come from `metrics`; the layouts and deliberate differences from OU are
listed in `metrics`' docstring.

Axes: N items, A answers per item.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

TR_EPS = 1e-10  # OU's epsilon in the truth ratio, the normalised probability and privleak
PRIVLEAK_COMPAT_REF_AUC = 0.5  # OU's `ref_value` fallback when there are no retain logs

# The 9 `model_utility` inputs (OU `configs/eval/tofu_metrics/model_utility.yaml`).
MODEL_UTILITY_KEYS = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)
TRUTH_RATIO_AGGREGATORS = ("closer_to_1_better", "true_better", "prob_mean")
ROUGE_TYPES = ("rougeL_recall", "rougeL_f1", "rouge1_recall")

Result = dict[str, Any]
Index = int | str


# ----------------------------------------------------------------------------------------------------------
# Statistics.


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """sklearn.metrics.roc_auc_score for binary labels {0,1} (1 = positive), ties counted one half.

    Computed as the Mann-Whitney U statistic from average ranks.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"roc_auc needs 1-D labels and scores of equal length; got {y.shape} and {s.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"roc_auc labels must be 0 or 1; got {sorted(set(y.tolist()))}")
    if not np.all(np.isfinite(s)):
        raise ValueError("roc_auc scores contain NaN or inf")
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Only one class present in y_true. ROC AUC score is not defined in that case.")
    ranks = scipy.stats.rankdata(s, method="average")
    u = float(np.sum(ranks[y == 1])) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def ks_pvalue(sample_a: Sequence[float], sample_b: Sequence[float]) -> float:
    """scipy.stats.ks_2samp(a, b).pvalue with its defaults (two-sided, method='auto')."""
    a, b = np.asarray(sample_a, dtype=np.float64), np.asarray(sample_b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"ks_pvalue needs two non-empty samples; got sizes {a.size} and {b.size}")
    return float(scipy.stats.ks_2samp(a, b).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """scipy.stats.hmean; 0 if any value is 0 (as scipy returns). Negative values are rejected."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"harmonic_mean needs finite values; got {values}")
    if np.any(v < 0):
        raise ValueError(f"harmonic_mean needs non-negative values; got {values}")
    if np.any(v == 0):
        return 0.0
    return float(scipy.stats.hmean(v))


def closer_to_1_better(tr: Sequence[float]) -> float:
    """OU forget aggregator: mean(min(tr, 1/(tr+1e-10)))."""
    arr = np.asarray(tr, dtype=np.float64)
    return float(np.mean(np.minimum(arr, 1 / (arr + TR_EPS))))


def true_better(tr: Sequence[float]) -> float:
    """OU retain aggregator: mean(max(0, 1-tr))."""
    arr = np.asarray(tr, dtype=np.float64)
    return float(np.mean(np.maximum(0, 1 - arr)))


# ----------------------------------------------------------------------------------------------------------
# Result builders (OU layout).


def _keys(n: int, indices: Sequence[Index] | None) -> list[str]:
    if indices is None:
        return [str(i) for i in range(n)]
    if len(indices) != n:
        raise ValueError(f"got {len(indices)} indices for {n} items")
    keys = [str(i) for i in indices]
    if len(set(keys)) != n:
        raise ValueError("indices repeat (OU: 'Data indices repeated while iterating dataloader')")
    return keys


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(np.asarray(kept, dtype=np.float64))) if kept else None


def _is_multi(x: Any) -> bool:
    return isinstance(x, list | tuple | np.ndarray)


def probability_result(
    avg_losses_N: Sequence[float | None] | Sequence[Sequence[float | None]],
    indices: Sequence[Index] | None = None,
) -> Result:
    """OU `probability`: prob = exp(-avg_loss); agg = mean over items (of the mean over answers).

    Single answer: `{"prob": p, "avg_loss": l}` per item. Multi-answer (a list of A losses per item, e.g.
    perturbed answers): `{"prob": [p_1..p_A], "avg_loss": [l_1..l_A]}` as OU's dict_transpose. An item with
    any None loss gets None entries and is skipped by the mean.
    """
    keys = _keys(len(avg_losses_N), indices)
    value_by_index, per_item = {}, []
    for key, loss in zip(keys, avg_losses_N, strict=True):
        if _is_multi(loss):
            losses = [None if x is None else float(x) for x in loss]
            if any(x is None for x in losses):
                value_by_index[key] = {"prob": [None] * len(losses), "avg_loss": [None] * len(losses)}
                per_item.append(None)
                continue
            probs = [math.exp(-x) for x in losses]
            value_by_index[key] = {"prob": probs, "avg_loss": losses}
            per_item.append(float(np.mean(probs)))
        elif loss is None:
            value_by_index[key] = {"prob": None, "avg_loss": None}
            per_item.append(None)
        else:
            p = math.exp(-float(loss))
            value_by_index[key] = {"prob": p, "avg_loss": float(loss)}
            per_item.append(p)
    return {"agg_value": _mean_or_none(per_item), "value_by_index": value_by_index}


def _paired(correct_vbi: Mapping[str, Any], wrong_vbi: Mapping[str, Any]) -> list[str]:
    if list(correct_vbi.keys()) != list(wrong_vbi.keys()):
        raise ValueError("correct and wrong value_by_index must have the same indices in the same order")
    return list(correct_vbi.keys())


def _entry_ok(entry: Any, field: str) -> bool:
    if entry is None or entry.get(field) is None:
        return False
    value = entry[field]
    return not (_is_multi(value) and any(v is None for v in value))


def probability_w_options_result(correct_vbi: Mapping[str, Any], wrong_vbi: Mapping[str, Any]) -> Result:
    """OU `probability_w_options` (ra/wf_Q_A_Prob_normalised): p_c / (p_c + sum_j p_wrong_j + 1e-10).

    Inputs are the `value_by_index` of the correct-answer and wrong-answers probability results.
    """
    value_by_index, vals = {}, []
    for key in _paired(correct_vbi, wrong_vbi):
        c, w = correct_vbi[key], wrong_vbi[key]
        if not (_entry_ok(c, "prob") and _entry_ok(w, "prob")):
            value_by_index[key] = {"prob": None}
            continue
        p_c = float(np.mean(c["prob"]))
        p_w = float(np.sum(np.asarray(w["prob"], dtype=np.float64)))
        val = p_c / (p_c + p_w + TR_EPS)
        value_by_index[key] = {"prob": val}
        vals.append(val)
    return {"agg_value": _mean_or_none(vals), "value_by_index": value_by_index}


def truth_ratio_result(
    correct_vbi: Mapping[str, Any], wrong_vbi: Mapping[str, Any], aggregator: str = "closer_to_1_better"
) -> Result:
    """OU `truth_ratio`: tr = exp(-mean_j avg_loss_wrong_j) / (exp(-avg_loss_correct) + 1e-10).

    The mean over wrong answers is taken on avg_loss, i.e. a geometric mean of per-token probabilities.
    `prob_mean` instead stores tr = P_true / (P_true + P_false + 1e-10) and averages it.
    """
    if aggregator not in TRUTH_RATIO_AGGREGATORS:
        raise ValueError(f"Invalid truth ratio aggregator: {aggregator} (choose {TRUTH_RATIO_AGGREGATORS})")
    value_by_index, ratios = {}, []
    for key in _paired(correct_vbi, wrong_vbi):
        c, w = correct_vbi[key], wrong_vbi[key]
        if not (_entry_ok(c, "avg_loss") and _entry_ok(w, "avg_loss")):
            value_by_index[key] = {"score": None}
            continue
        p_true = math.exp(-float(np.mean(c["avg_loss"])))
        p_false = math.exp(-float(np.mean(w["avg_loss"])))
        if aggregator == "prob_mean":
            tr = p_true / (p_true + p_false + TR_EPS)
        else:
            tr = p_false / (p_true + TR_EPS)
        value_by_index[key] = {"score": tr}
        ratios.append(tr)
    if not ratios:
        agg = None
    elif aggregator == "closer_to_1_better":
        agg = closer_to_1_better(ratios)
    elif aggregator == "true_better":
        agg = true_better(ratios)
    else:
        agg = float(np.mean(ratios))
    return {"agg_value": agg, "value_by_index": value_by_index}


def rouge_ground_truth(full_text: str, input_text: str) -> str:
    """OU ground truth: decode(labels).replace(decode(input_ids), "").strip()."""
    return full_text.replace(input_text, "").strip()


def clean_generation(text: str, stopwords: Sequence[str] = (), eos_text: str | None = None) -> str:
    """OU generation cleaning: cut at the decoded EOS string, then at each stopword in order; strip."""
    words = ([eos_text] if eos_text is not None else []) + list(stopwords)
    for word in words:
        if word and word in text:
            text = text.split(word)[0]
    return text.strip()


_ROUGE_SCORER = None


def _rouge_scorer():
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return _ROUGE_SCORER


def rouge_scores(ground_truth: str, generation: str) -> dict[str, float]:
    """OU `eval_rouge_recall_batch` for one pair: rouge_score with use_stemmer=True, score(gt, gen)."""
    s = _rouge_scorer().score(ground_truth, generation)
    return {
        "rouge1_recall": s["rouge1"].recall,
        "rougeL_f1": s["rougeL"].fmeasure,
        "rougeL_recall": s["rougeL"].recall,
    }


def rouge_result(
    ground_truths: Sequence[str],
    generations: Sequence[str],
    inputs: Sequence[str],
    rouge_type: str = "rougeL_recall",
    indices: Sequence[Index] | None = None,
) -> Result:
    """OU `rouge`: per item the three ROUGE numbers plus input / ground_truth / generation texts.

    rouge_type: "rougeL_recall" (TOFU) or "rougeL_f1" (MUSE). Texts must already be cleaned
    (`rouge_ground_truth`, `clean_generation`).
    """
    if rouge_type not in ROUGE_TYPES:
        raise ValueError(f"Invalid rouge_type: {rouge_type} (choose {ROUGE_TYPES})")
    if not len(ground_truths) == len(generations) == len(inputs):
        raise ValueError(
            f"rouge_result got {len(ground_truths)} ground truths, {len(generations)} generations, "
            f"{len(inputs)} inputs"
        )
    keys = _keys(len(ground_truths), indices)
    value_by_index = {}
    for key, gt, gen, inp in zip(keys, ground_truths, generations, inputs, strict=True):
        value_by_index[key] = {**rouge_scores(gt, gen), "input": inp, "ground_truth": gt, "generation": gen}
    agg = _mean_or_none([v[rouge_type] for v in value_by_index.values()])
    return {"agg_value": agg, "value_by_index": value_by_index}


def score_result(scores: Sequence[float | None], indices: Sequence[Index] | None = None) -> Result:
    """`{"score": s}` per item, agg = mean of the non-None scores (OU EM, ES and each MIA side)."""
    keys = _keys(len(scores), indices)
    vbi = {k: {"score": None if s is None else float(s)} for k, s in zip(keys, scores, strict=True)}
    return {"agg_value": _mean_or_none(scores), "value_by_index": vbi}


def mia_result(
    forget_scores: Sequence[float | None],
    holdout_scores: Sequence[float | None],
    forget_indices: Sequence[Index] | None = None,
    holdout_indices: Sequence[Index] | None = None,
) -> Result:
    """OU `mia_auc`: `{"forget": side, "holdout": side, "auc": a, "agg_value": a}`.

    AUC of sklearn.roc_auc_score with labels forget=0, holdout=1 (scores are loss-like: higher = less likely
    a member, so AUC near 1 means the forget items look like members). None scores are left out of the AUC.
    """
    forget, holdout = (
        score_result(forget_scores, forget_indices),
        score_result(holdout_scores, holdout_indices),
    )
    f = [float(s) for s in forget_scores if s is not None]
    h = [float(s) for s in holdout_scores if s is not None]
    auc = roc_auc([0] * len(f) + [1] * len(h), f + h)
    return {"forget": forget, "holdout": holdout, "auc": auc, "agg_value": auc}


def scores_of(result: Mapping[str, Any], field: str = "score") -> list[float | None]:
    """The per-item `field` values of a result's value_by_index, in order (None where missing)."""
    if "value_by_index" not in result:
        raise ValueError(f"result has no 'value_by_index'; keys are {sorted(result)}")
    return [None if e is None else e.get(field) for e in result["value_by_index"].values()]


def forget_quality_result(
    model_tr: Sequence[float | None], retain_tr: Sequence[float | None] | None
) -> Result:
    """OU `forget_quality` (ks_test): ks_2samp(per-item tr of the model, of the retain model).pvalue.

    `retain_tr` None (no retain logs) gives agg_value None, as OU. None items are left out.
    """
    if retain_tr is None:
        return {"agg_value": None}
    a = [float(x) for x in model_tr if x is not None]
    b = [float(x) for x in retain_tr if x is not None]
    return {"agg_value": ks_pvalue(a, b)}


def model_utility_result(values: Mapping[str, float | None]) -> Result:
    """OU `hm_aggregate`: harmonic mean of exactly the 9 MODEL_UTILITY_KEYS values (0 if any is 0)."""
    missing = [k for k in MODEL_UTILITY_KEYS if k not in values]
    if missing:
        raise ValueError(f"model_utility needs {list(MODEL_UTILITY_KEYS)}; missing {missing}")
    vals = [values[k] for k in MODEL_UTILITY_KEYS]
    if any(v is None for v in vals):
        return {"agg_value": None}
    return {"agg_value": harmonic_mean([float(v) for v in vals])}


def privleak_result(auc: float, retain_auc: float | None, compat: bool = False) -> Result:
    """OU `privleak`: (score - ref)/(ref + 1e-10)*100 with score = 1-AUC, ref = 1-AUC_retain (mia_min_k).

    Without `retain_auc`: OU silently uses a reference AUC of 0.5; we do so only with `compat=True` and
    otherwise return agg_value None with a note.
    """
    if retain_auc is None:
        if not compat:
            return {
                "agg_value": None,
                "note": "no retain-model logs (mia_min_k.agg_value); OU falls back to AUC 0.5 (compat=True)",
            }
        retain_auc = PRIVLEAK_COMPAT_REF_AUC
    score, ref = 1 - float(auc), 1 - float(retain_auc)
    return {"agg_value": (score - ref) / (ref + TR_EPS) * 100}


def rel_diff_result(value: float, retain_value: float | None, compat: bool = False) -> Result:
    """OU `rel_diff`: (value - ref)/(ref + 1e-10)*100, the privleak formula without the 1- flip."""
    if retain_value is None:
        if not compat:
            return {
                "agg_value": None,
                "note": "no retain-model logs; OU would fall back to 0.5 (compat=True)",
            }
        retain_value = PRIVLEAK_COMPAT_REF_AUC
    return {"agg_value": (float(value) - float(retain_value)) / (float(retain_value) + TR_EPS) * 100}
