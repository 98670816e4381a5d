"""Pure losses on logits, labels and masks; all maths in float32 (inputs are cast).

Axes: B batch, T sequence length, t = T-1 shifted length, V vocabulary.

Labels follow Hugging Face: token ids with IGNORE (-100) on non-target positions (prompt, padding),
*unshifted*, so the logits at position t predict labels[t + 1]. Every average over an empty set
(no target token at all) returns 0, never NaN.
"""

from typing import Literal

import jax
import jax.numpy as jnp

from cel_jax.data.format import IGNORE

Average = Literal["token", "sequence", "all"]
Tie = Literal["split", "first"]

_AVERAGES = ("token", "sequence", "all")
_TIES = ("split", "first")


def _check_logits_labels(logits_BTV: jax.Array, labels_BT: jax.Array, where: str) -> None:
    if logits_BTV.ndim != 3:
        raise ValueError(f"{where}: logits must have shape [B, T, V], got {tuple(logits_BTV.shape)}")
    if labels_BT.ndim != 2 or tuple(labels_BT.shape) != tuple(logits_BTV.shape[:2]):
        raise ValueError(
            f"{where}: labels must have shape [B, T] = {tuple(logits_BTV.shape[:2])}, "
            f"got {tuple(labels_BT.shape)}"
        )


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}")


def shift(logits_BTV: jax.Array, labels_BT: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Causal shift: returns (fp32 logits[:, :-1], targets labels[:, 1:], mask targets != IGNORE).

    Ignored targets are replaced by 0 so they are always valid gather indices; use the mask.
    """
    _check_logits_labels(logits_BTV, labels_BT, "shift")
    if logits_BTV.shape[1] < 2:
        raise ValueError(f"shift: need T >= 2 positions, got T={logits_BTV.shape[1]}")
    logits_BtV = logits_BTV[:, :-1].astype(jnp.float32)
    raw_Bt = labels_BT[:, 1:]
    mask_Bt = raw_Bt != IGNORE
    targets_Bt = jnp.where(mask_Bt, raw_Bt, 0).astype(jnp.int32)
    return logits_BtV, targets_Bt, mask_Bt


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask (any shape); 0 when the mask is empty."""
    m = mask.astype(jnp.float32)
    return jnp.sum(jnp.where(mask, x.astype(jnp.float32), 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


def average_positions(x_BT: jax.Array, mask_BT: jax.Array, average: Average = "token") -> jax.Array:
    """Average per-position values.

    "token": mean over all masked positions of the batch (reference code);
    "sequence": mean over masked positions of each sequence, then over sequences that have any (paper);
    "all": plain mean over every position, ignoring the mask (PDU fork before PR147).
    """
    _check_choice(average, _AVERAGES, "average")
    x_BT = x_BT.astype(jnp.float32)
    if average == "token":
        return masked_mean(x_BT, mask_BT)
    if average == "all":
        return jnp.mean(x_BT)
    count_B = jnp.sum(mask_BT.astype(jnp.float32), axis=-1)
    per_seq_B = jnp.sum(jnp.where(mask_BT, x_BT, 0.0), axis=-1) / jnp.maximum(count_B, 1.0)
    return masked_mean(per_seq_B, count_B > 0)


def token_nll(logits_BTV: jax.Array, labels_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shifted per-token CE -log p(labels[t+1] | <= t): (nll_Bt with 0 at ignored targets, mask_Bt)."""
    logits_BtV, targets_Bt, mask_Bt = shift(logits_BTV, labels_BT)
    lse_Bt = jax.nn.logsumexp(logits_BtV, axis=-1)
    picked_Bt = jnp.take_along_axis(logits_BtV, targets_Bt[..., None], axis=-1)[..., 0]
    return jnp.where(mask_Bt, lse_Bt - picked_Bt, 0.0), mask_Bt


def token_ce_mean(logits_BTV: jax.Array, labels_BT: jax.Array) -> jax.Array:
    """HF `outputs.loss`: token-mean shifted CE over all non-ignored targets of the batch (retain loss)."""
    nll_Bt, mask_Bt = token_nll(logits_BTV, labels_BT)
    return masked_mean(nll_Bt, mask_Bt)


def sequence_nll(logits_BTV: jax.Array, labels_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reference `compute_batch_nll`: per-sequence SUM of shifted CE [B] and target-token counts [B]."""
    nll_Bt, mask_Bt = token_nll(logits_BTV, labels_BT)
    return jnp.sum(nll_Bt, axis=-1), jnp.sum(mask_Bt.astype(jnp.int32), axis=-1)


def _forget_rows(logits_BTV: jax.Array, labels_BT: jax.Array, shifted: bool) -> tuple[jax.Array, jax.Array]:
    """Logit rows that enter a forget loss and their mask.

    shifted=True: rows that predict answer tokens (logits[:, :-1] where labels[:, 1:] != IGNORE; paper).
    shifted=False: rows at answer positions (logits[:, t] where labels[:, t] != IGNORE; authors' code).
    """
    if shifted:
        logits_BtV, _, mask_Bt = shift(logits_BTV, labels_BT)
        return logits_BtV, mask_Bt
    _check_logits_labels(logits_BTV, labels_BT, "forget loss")
    return logits_BTV.astype(jnp.float32), labels_BT != IGNORE


def margin_sq(logits_NV: jax.Array, tie: Tie = "split") -> jax.Array:
    """Per-row (max_k z_k - mean_k z_k)^2 in fp32.

    tie="split": jnp.max, whose gradient is shared equally among tied maxima;
    tie="first": take_along_axis(argmax), gradient to the first maximum only (like torch.max).
    """
    _check_choice(tie, _TIES, "tie")
    z = logits_NV.astype(jnp.float32)
    if tie == "split":
        top = jnp.max(z, axis=-1)
    else:
        top = jnp.take_along_axis(z, jnp.argmax(z, axis=-1)[..., None], axis=-1)[..., 0]
    # mean_k(top - z_k) == top - mean_k z_k, but is exactly 0 when every z_k equals top.
    return jnp.square(jnp.mean(top[..., None] - z, axis=-1))


def logit_margin(
    logits_BTV: jax.Array,
    labels_BT: jax.Array,
    *,
    shifted: bool = True,
    average: Average = "token",
    tie: Tie = "split",
) -> jax.Array:
    """PDU forget loss (logit-margin flattening): average of (max_k z - mean_k z)^2 over answer rows.

    Zero exactly when every used row is constant (uniform softmax). `shifted=False, tie="first"` is the
    authors' masked code (PR147); `shifted=False, average="all"` is the earlier unmasked fork code.
    """
    z_BTV, mask_BT = _forget_rows(logits_BTV, labels_BT, shifted)
    return average_positions(margin_sq(z_BTV, tie), mask_BT, average)


def entropy(logits_NV: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of softmax over the last axis, fp32."""
    logp = jax.nn.log_softmax(logits_NV.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropy_forget(
    logits_BTV: jax.Array,
    labels_BT: jax.Array,
    *,
    shifted: bool = True,
    average: Average = "token",
) -> jax.Array:
    """Entropy-maximisation forget loss (ablation): minus the average softmax entropy over answer rows."""
    z_BTV, mask_BT = _forget_rows(logits_BTV, labels_BT, shifted)
    return -average_positions(entropy(z_BTV), mask_BT, average)


def kl_per_position(logits_BTV: jax.Array, ref_logits_BTV: jax.Array) -> jax.Array:
    """KL(p_ref || p_model) at every position [B, T]; the reference side is stop-gradient."""
    if logits_BTV.shape != ref_logits_BTV.shape or logits_BTV.ndim != 3:
        raise ValueError(
            f"kl: logits and ref_logits must both be [B, T, V] with equal shapes, got "
            f"{tuple(logits_BTV.shape)} and {tuple(ref_logits_BTV.shape)}"
        )
    logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    logq = jax.nn.log_softmax(jax.lax.stop_gradient(ref_logits_BTV).astype(jnp.float32), axis=-1)
    p_ref = jnp.exp(logq)
    return jnp.sum(jnp.where(p_ref > 0, p_ref * (logq - logp), 0.0), axis=-1)  # 0 log 0 = 0


def kl_to_reference(
    logits_BTV: jax.Array, ref_logits_BTV: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """KL(p_ref || p_model) averaged over positions.

    mask=None: reference GradDiff KL, `kl_div(..., reduction="batchmean")` on (B*T, V), i.e. the
    mean over ALL B*T positions (prompt and padding included). With a mask: mean over masked positions.
    """
    kl_BT = kl_per_position(logits_BTV, ref_logits_BTV)
    if mask is None:
        return jnp.mean(kl_BT)
    if tuple(mask.shape) != tuple(kl_BT.shape):
        raise ValueError(f"kl: mask must have shape {tuple(kl_BT.shape)}, got {tuple(mask.shape)}")
    return masked_mean(kl_BT, mask)


def kl_on_targets(logits_BTV: jax.Array, ref_logits_BTV: jax.Array, labels_BT: jax.Array) -> jax.Array:
    """KL(p_ref || p_model) averaged over the rows that predict non-ignored targets (shifted mask)."""
    _check_logits_labels(logits_BTV, labels_BT, "kl_on_targets")
    mask_Bt = labels_BT[:, 1:] != IGNORE
    return kl_to_reference(logits_BTV[:, :-1], ref_logits_BTV[:, :-1], mask_Bt)
