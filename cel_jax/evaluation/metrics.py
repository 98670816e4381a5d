"""TOFU / MUSE metrics computed exactly as open-unlearning (OU, commit d3d7cf9) computes them.

Axis legend: B batch, T sequence length, S = T-1 next-token positions (S index s predicts labels[:, s+1]),
V vocab, N tokens of one item, A answers per item.

Two layers:
* `token_stats` (one jittable function) turns logits and HF-style labels into per-item / per-position
  statistics in float32.
* Host-side numpy functions turn those statistics into OU's per-item scores (here) and into OU's result
  layout `{"agg_value": float | None, "value_by_index": {"0": {...}, ...}}` under OU's field names
  (`results`, re-exported here).

Deliberate differences from OU (everything else is meant to be bit-for-bit the same formula):
* Items with no target tokens: OU divides 0/0 (NaN) in `evaluate_probability`; here they get
  `{"prob": None, "avg_loss": None}` and are skipped by every aggregate (OU's EM already uses None,
  ES uses 0, Min-K / Min-K++ use 0, and we copy those).
* OU's `truth_ratio` zips the *unfiltered* indices with the *filtered* ratios when an item is None (the
  ratios then shift onto the wrong indices); here each index keeps its own ratio and invalid ones get None.
* `privleak` without retain logs: OU silently uses a reference AUC of 0.5; here `agg_value` is None with a
  "note", unless `compat=True`.
* LOSS / ZLib / reference MIA scores of items with no targets are None and left out of the AUC (OU would
  feed NaN to sklearn, which raises).

Layouts (OU's): probability `{"prob", "avg_loss"}` (lists for multi-answer items); probability_w_options
`{"prob"}`; truth_ratio `{"score"}`; rouge `{"rouge1_recall", "rougeL_f1", "rougeL_recall", "input",
"ground_truth", "generation"}`; EM / ES `{"score"}`; MIA `{"forget": {agg, vbi}, "holdout": {agg, vbi},
"auc", "agg_value"}`; forget_quality, model_utility, privleak only `{"agg_value"}`. GradNorm scores are the
positive mean norm (OU after the "model.train() during the attack" change; an older OU revision negated it).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Re-exported: the statistics and OU result layouts live in `results`; `M.<name>` keeps working.
from cel_jax.data.format import IGNORE
from cel_jax.evaluation.results import (  # noqa: F401
    MODEL_UTILITY_KEYS,
    PRIVLEAK_COMPAT_REF_AUC,
    ROUGE_TYPES,
    TR_EPS,
    TRUTH_RATIO_AGGREGATORS,
    Index,
    Result,
    clean_generation,
    closer_to_1_better,
    forget_quality_result,
    harmonic_mean,
    ks_pvalue,
    mia_result,
    model_utility_result,
    privleak_result,
    probability_result,
    probability_w_options_result,
    rel_diff_result,
    roc_auc,
    rouge_ground_truth,
    rouge_result,
    rouge_scores,
    score_result,
    scores_of,
    true_better,
    truth_ratio_result,
)
from cel_jax.unlearning import losses

MIA_K = 0.4  # OU's k for mia_min_k / mia_min_k_plus_plus / privleak
MINKPP_SIGMA2_MIN = 1e-6  # OU's clamp of the Min-K++ variance


# ----------------------------------------------------------------------------------------------------------
# Token statistics (jittable).


def token_stats(logits_BTV: jax.Array, labels_BT: jax.Array) -> dict[str, jax.Array]:
    """Per-item and per-position statistics of a forward pass, in float32.

    Labels are HF style: unshifted, `IGNORE` where there is no target; logits at t-1 predict
    labels[t]. Jittable (shape checks use static shapes only).

    Returns:
      loss_sum_B: sum of CE over labelled shifted positions.
      n_tokens_B: number of labels != IGNORE over the whole row (OU's `num_token_gt`).
      avg_loss_B: loss_sum / n_tokens (NaN where n_tokens == 0).
      valid_B: n_tokens > 0.
      label_mask_BS: labels[:, 1:] != IGNORE.
      mia_mask_BS: label_mask with each row's last labelled position dropped (OU's "ignore eos prediction"
        in `tokenwise_logprobs` / `tokenwise_vocab_logprobs`, used by Min-K, Min-K++, EM, ES, GradNorm).
      n_mia_B: mia_mask row sums.
      token_logp_BS: log p(labels[t] | <t) (0 where unlabelled).
      mu_BS, sigma2_BS: Min-K++ mean and (unclamped) variance of log p under p at each position.
      correct_BS: argmax(log p) == labels[t] (False where unlabelled).
      contiguous_B: labelled positions form one run (OU's slicing assumes it; always true for OU data).
    """
    if logits_BTV.ndim != 3 or labels_BT.ndim != 2:
        raise ValueError(
            "token_stats expects logits [B,T,V] and labels [B,T]; "
            f"got {logits_BTV.shape} and {labels_BT.shape}"
        )
    if logits_BTV.shape[:2] != labels_BT.shape:
        raise ValueError(f"logits {logits_BTV.shape} and labels {labels_BT.shape} disagree on [B,T]")
    if labels_BT.shape[1] < 2:
        raise ValueError(
            f"token_stats needs T >= 2 to have a next-token position; got T={labels_BT.shape[1]}"
        )
    return _token_stats(logits_BTV, labels_BT)


def target_logp(logits_BTV: jax.Array, labels_BT: jax.Array):
    """The causal shift (losses.shift) in fp32: log-probabilities [B,S,V], targets [B,S] (0 where ignored),
    their mask, and each target's log-probability (0 where ignored)."""
    logits_BSV, target_BS, mask_BS = losses.shift(logits_BTV, labels_BT.astype(jnp.int32))
    logp_BSV = jax.nn.log_softmax(logits_BSV, axis=-1)
    token_logp_BS = jnp.take_along_axis(logp_BSV, target_BS[..., None], axis=-1)[..., 0]
    return logp_BSV, target_BS, mask_BS, jnp.where(mask_BS, token_logp_BS, 0.0)


@jax.jit
def _token_stats(logits_BTV: jax.Array, labels_BT: jax.Array) -> dict[str, jax.Array]:
    logp_BSV, target_BS, label_mask_BS, token_logp_BS = target_logp(logits_BTV, labels_BT)

    loss_sum_B = -jnp.sum(token_logp_BS, axis=-1)
    n_tokens_B = jnp.sum(labels_BT != IGNORE, axis=-1).astype(jnp.int32)
    valid_B = n_tokens_B > 0
    avg_loss_B = jnp.where(valid_B, loss_sum_B / jnp.maximum(n_tokens_B, 1), jnp.nan)

    S = target_BS.shape[1]
    pos_S = jnp.arange(S)
    last_B = jnp.max(jnp.where(label_mask_BS, pos_S[None, :], -1), axis=-1)
    first_B = jnp.min(jnp.where(label_mask_BS, pos_S[None, :], S), axis=-1)
    mia_mask_BS = label_mask_BS & (pos_S[None, :] != last_B[:, None])
    n_labelled_B = jnp.sum(label_mask_BS, axis=-1)
    contiguous_B = (n_labelled_B == 0) | (n_labelled_B == last_B - first_B + 1)

    p_BSV = jnp.exp(logp_BSV)
    mu_BS = jnp.sum(p_BSV * logp_BSV, axis=-1)
    sigma2_BS = jnp.sum(p_BSV * jnp.square(logp_BSV), axis=-1) - jnp.square(mu_BS)
    correct_BS = (jnp.argmax(logp_BSV, axis=-1) == target_BS) & label_mask_BS

    return {
        "loss_sum_B": loss_sum_B,
        "n_tokens_B": n_tokens_B,
        "avg_loss_B": avg_loss_B,
        "valid_B": valid_B,
        "label_mask_BS": label_mask_BS,
        "mia_mask_BS": mia_mask_BS,
        "n_mia_B": jnp.sum(mia_mask_BS, axis=-1).astype(jnp.int32),
        "token_logp_BS": token_logp_BS,
        "mu_BS": mu_BS,
        "sigma2_BS": sigma2_BS,
        "correct_BS": correct_BS,
        "contiguous_B": contiguous_B,
    }


@jax.jit
def mia_token_nll(logits_BTV: jax.Array, labels_BT: jax.Array) -> jax.Array:
    """GradNorm attack loss per item [B]: -mean of target log-probs over the MIA positions (OU gradnorm.py).

    Differentiable; an item without MIA positions gives NaN (as torch's mean of an empty tensor).
    """
    _, target_BS, label_mask_BS, lp_BS = target_logp(logits_BTV, labels_BT)
    pos_S = jnp.arange(target_BS.shape[1])
    last_B = jnp.max(jnp.where(label_mask_BS, pos_S[None, :], -1), axis=-1)
    mask_BS = label_mask_BS & (pos_S[None, :] != last_B[:, None])
    n_B = jnp.sum(mask_BS, axis=-1)
    return -jnp.sum(jnp.where(mask_BS, lp_BS, 0.0), axis=-1) / n_B


def grad_norm_mean(grads: Any, p: float = 2) -> jax.Array:
    """OU GradNorm statistic: the MEAN over parameter tensors of each tensor's p-norm (not the global norm).

    The attack score is this value itself (higher = larger loss gradient = less likely a member).
    """
    if p not in (1, 2, math.inf):
        raise ValueError(f"Invalid p-norm value: {p} (OU allows 1, 2, inf)")
    leaves = jax.tree_util.tree_leaves(grads)
    if not leaves:
        raise ValueError("grad_norm_mean got an empty gradient pytree")
    return _grad_norm_mean(leaves, p)


@functools.partial(jax.jit, static_argnums=1)
def _grad_norm_mean(leaves: list[jax.Array], p: float) -> jax.Array:
    norms = [jnp.linalg.norm(jnp.ravel(g).astype(jnp.float32), ord=p) for g in leaves]
    return jnp.mean(jnp.stack(norms))


# ----------------------------------------------------------------------------------------------------------
# Per-item scores (host side).


def _np(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def item_tokens(stats: Mapping[str, Any], key: str, mask_key: str = "mia_mask_BS") -> list[np.ndarray]:
    """Per item, the compact 1-D array of `stats[key]` at the positions of `stats[mask_key]`."""
    if key not in stats or mask_key not in stats:
        raise ValueError(f"stats lacks {key!r} or {mask_key!r}; have {sorted(stats)}")
    values_BS, mask_BS = _np(stats[key]), _np(stats[mask_key]).astype(bool)
    return [values_BS[b][mask_BS[b]] for b in range(values_BS.shape[0])]


def avg_losses(stats: Mapping[str, Any]) -> list[float | None]:
    """OU `avg_loss` per item (None for an item with no target tokens)."""
    avg_B, valid_B = _np(stats["avg_loss_B"]), _np(stats["valid_B"]).astype(bool)
    return [float(a) if v else None for a, v in zip(avg_B, valid_B, strict=True)]


def min_k_score(token_logp_N: np.ndarray, k: float = MIA_K) -> float:
    """OU Min-K: -mean of the smallest max(1, int(n*k)) target log-probs; 0 for an empty item."""
    lp = np.asarray(token_logp_N, dtype=np.float32)
    if lp.size == 0:
        return 0.0
    num_k = max(1, int(len(lp) * k))
    return float(-np.mean(np.sort(lp)[:num_k]))


def min_k_plus_plus_score(
    token_logp_N: np.ndarray, mu_N: np.ndarray, sigma2_N: np.ndarray, k: float = MIA_K
) -> float:
    """OU Min-K++: z = (logp - mu)/sqrt(max(sigma2, 1e-6)); -mean of the smallest int-k share; 0 if empty."""
    lp = np.asarray(token_logp_N, dtype=np.float32)
    if lp.size == 0:
        return 0.0
    sigma2 = np.maximum(np.asarray(sigma2_N, dtype=np.float32), np.float32(MINKPP_SIGMA2_MIN))
    z = (lp - np.asarray(mu_N, dtype=np.float32)) / np.sqrt(sigma2)
    num_k = max(1, int(len(z) * k))
    return float(-np.mean(np.sort(z)[:num_k]))


def zlib_score(avg_loss: float | None, text: str) -> float | None:
    """OU ZLib: avg_loss / len(zlib.compress(text.encode("utf-8"))); text = decoded target tokens."""
    if avg_loss is None:
        return None
    return float(avg_loss) / len(zlib.compress(text.encode("utf-8")))


def reference_score(avg_loss_target: float | None, avg_loss_ref: float | None) -> float | None:
    """OU reference attack: avg_loss(target model) - avg_loss(reference model)."""
    if avg_loss_target is None or avg_loss_ref is None:
        return None
    return float(avg_loss_target) - float(avg_loss_ref)


def exact_memorization_score(correct_N: np.ndarray) -> float | None:
    """OU EM: share of MIA positions where argmax == label; None for an item with no positions."""
    c = np.asarray(correct_N, dtype=bool)
    return None if c.size == 0 else float(c.sum() / c.size)


def extraction_strength_score(correct_N: np.ndarray) -> float:
    """OU ES = 1 - k*/L with k* the first suffix start whose tokens all match, with OU's loop quirk.

    The loop `for k in range(L): if suffix matches: break` leaves k = L-1 when nothing matches, so the
    minimum is 1/L (and a 1-token item always scores 1). Items with no positions score 0.
    """
    c = np.asarray(correct_N, dtype=bool)
    L = c.size
    if L == 0:
        return 0.0
    wrong = np.flatnonzero(~c)
    k = 0 if wrong.size == 0 else min(int(wrong[-1]) + 1, L - 1)
    return 1.0 - k / L


def min_k_scores(stats: Mapping[str, Any], k: float = MIA_K) -> list[float]:
    return [min_k_score(lp, k) for lp in item_tokens(stats, "token_logp_BS")]


def min_k_plus_plus_scores(stats: Mapping[str, Any], k: float = MIA_K) -> list[float]:
    lps, mus, s2s = (item_tokens(stats, key) for key in ("token_logp_BS", "mu_BS", "sigma2_BS"))
    return [min_k_plus_plus_score(lp, mu, s2, k) for lp, mu, s2 in zip(lps, mus, s2s, strict=True)]


def exact_memorization_scores(stats: Mapping[str, Any]) -> list[float | None]:
    return [exact_memorization_score(c) for c in item_tokens(stats, "correct_BS")]


def extraction_strength_scores(stats: Mapping[str, Any]) -> list[float]:
    return [extraction_strength_score(c) for c in item_tokens(stats, "correct_BS")]
