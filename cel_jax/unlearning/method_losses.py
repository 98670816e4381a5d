"""Forget and retain losses of PDU and the baselines, as pure functions of precomputed quantities
(the registry that names them, their defaults and needs is `methods.py`).

Axes: B batch, T length, t = T-1 shifted length, V vocabulary, D hidden width.

A forget loss is `fn(q, *, <hyper-parameters>, compat=False) -> (loss, aux)`; `q` maps names to arrays
the caller computed (policy outputs inside the gradient, reference-model outputs outside it):

  forget_logits [B,T,V], forget_labels [B,T]  policy on the forget batch (HF labels, IGNORE = -100)
  retain_logits [B,T,V], retain_labels [B,T]  policy on the retain batch
  ref_forget_logits [B,T,V]                   reference model on the forget batch (UNDIAL)
  ref_forget_nll [B]                          reference per-sequence NLL sum on the forget batch (NPO,
                                              IdkDPO): losses.sequence_nll(ref_logits, labels)[0]
  idk_logits [B,T',V], idk_labels [B,T']      policy on the same questions with an "I don't know" answer
  ref_idk_nll [B]                             reference per-sequence NLL sum on the idk batch (IdkDPO)
  ref_retain_logits [B,T,V]                   reference model on the retain batch (retain "kl")
  forget_hidden, retain_hidden [B,T,D]        policy residual stream after decoder layer `layer` (RMU)
  ref_retain_hidden [B,T,D]                   reference residual stream at the same layer (RMU retain)
  control_vec [D]                             RMU random direction (`rmu_control_vector`)

The retain term is separate (`retain_loss`), so an engine combines gamma*forget + alpha*retain
(`scalarised`) or gamma*forget + lam*(retain - eps) (primal-dual, `dual.lagrangian`).

Differences from open-unlearning (default here vs `compat=True`, which reproduces the reference code):

| method | default (cel_jax) | compat=True (reference) |
|---|---|---|
| pdu, pdu_entropy | rows that predict answers: z[:, :-1], labels[:, 1:] | answer rows, unshifted (1) |
| pdu | jnp.max: gradient shared among tied maxima | to the first maximum only (torch.max) |
| undial | soft-label CE averaged over answer targets | over all B*(T-1) rows, wrapped index (2) |
| retain "kl" (grad_diff) | KL(p_ref‖p) over rows that predict answers | "batchmean" over all B*T rows (3) |
| rmu, retain "embed_diff" | mean_b(s_b / n_b), per-sequence masked MSE | mean_b(s_b) * mean_b(1 / n_b) (4) |
| npo, idk_dpo | mean over sequences with >= 1 target token | mean over all sequences (5) |
| simnpo, rmu | mean over sequences with >= 1 target token | same (reference: 0/0 = NaN or inf) |
| every loss | no target token in the batch gives 0 | reference: NaN |

(1) PR147 masks logits[:, t] where labels[:, t] != -100: it drops the row that predicts the first answer
    token and adds the row at the last target (the EOS row, which predicts past the end).
(2) Prompt and padding rows are averaged in, and at label -100 the one-hot index wraps to token V-100.
(3) Prompt and padding rows included.
(4) `compute_activation_loss` divides a [B] tensor of per-sequence sums s_b by a [B, 1] tensor of token
    counts n_b; broadcasting makes a [B, B] matrix whose mean is mean(s) * mean(1/n). It equals the
    intended per-sequence mean only when all sequences have the same number of target tokens.
(5) A sequence without target tokens adds the constant (2/beta)*log 2.

Same in both modes, noted for readers: SimNPO puts the margin inside the log-sigmoid as beta·delta (the
paper's gamma equals beta·delta; open-unlearning issue #123). RMU masks hidden states with the unshifted
labels != -100 (the activations *at* answer tokens) and computes in fp32 where the reference uses bf16.
The PDU fork code before PR147 (mean over every row) is `losses.logit_margin(..., shifted=False,
average="all")`. Hyper-parameter defaults are the trainer YAMLs' (`configs/trainer/*.yaml`); the
experiment configs override lr/epochs, and the PDU run scripts use lam0 = 100/50, dual_lr = 5/1.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from cel_jax.unlearning import losses
from cel_jax.unlearning.losses import IGNORE

Batch = Mapping[str, jax.Array]
Aux = dict[str, jax.Array]


def _has_targets(count_B: jax.Array) -> jax.Array:
    return count_B > 0


def _seq_average(x_B: jax.Array, valid_B: jax.Array, compat_plain_mean: bool) -> jax.Array:
    return jnp.mean(x_B) if compat_plain_mean else losses.masked_mean(x_B, valid_B)


def _check_batch(name: str, x_B: jax.Array, B: int) -> jax.Array:
    x_B = jnp.asarray(x_B, jnp.float32)
    if x_B.shape != (B,):
        raise ValueError(f"{name} must have shape [B] = ({B},), got {tuple(x_B.shape)}")
    return x_B


# ----------------------------------------------------------------------------------------- forget losses


def grad_ascent(q: Batch, *, compat: bool = False) -> tuple[jax.Array, Aux]:
    """GradAscent / GradDiff forget term: -CE_mean(forget) (HF token-mean CE, negated)."""
    ce = losses.token_ce_mean(q["forget_logits"], q["forget_labels"])
    return -ce, {"forget_ce": ce}


def grad_diff(q: Batch, *, compat: bool = False) -> tuple[jax.Array, Aux]:
    """GradDiff forget term (same as GradAscent); its retain term is `retain_loss("nll" | "kl")`."""
    return grad_ascent(q, compat=compat)


def npo(q: Batch, *, beta: float = 0.1, compat: bool = False) -> tuple[jax.Array, Aux]:
    """NPO: -(2/beta) mean_b logsigmoid(-beta * r_b), r = log pi(y|x) - log pi_ref(y|x) (sequence sums)."""
    nll_B, count_B = losses.sequence_nll(q["forget_logits"], q["forget_labels"])
    ref_B = _check_batch("ref_forget_nll", q["ref_forget_nll"], nll_B.shape[0])
    log_ratio_B = -(nll_B - jax.lax.stop_gradient(ref_B))
    per_B = -(2.0 / beta) * jax.nn.log_sigmoid(-beta * log_ratio_B)
    valid_B = _has_targets(count_B)
    loss = _seq_average(per_B, valid_B, compat)
    return loss, {"log_ratio": losses.masked_mean(log_ratio_B, valid_B)}


def simnpo(q: Batch, *, beta: float = 4.5, delta: float = 0.0, compat: bool = False) -> tuple[jax.Array, Aux]:
    """SimNPO: s = NLL_sum/|y| - delta; -(2/beta) mean_b logsigmoid(beta * s) (no reference model)."""
    nll_B, count_B = losses.sequence_nll(q["forget_logits"], q["forget_labels"])
    avg_nll_B = nll_B / jnp.maximum(count_B, 1).astype(jnp.float32)
    per_B = -(2.0 / beta) * jax.nn.log_sigmoid(beta * (avg_nll_B - delta))
    valid_B = _has_targets(count_B)
    return losses.masked_mean(per_B, valid_B), {"forget_avg_nll": losses.masked_mean(avg_nll_B, valid_B)}


def idk_dpo(q: Batch, *, beta: float = 0.1, compat: bool = False) -> tuple[jax.Array, Aux]:
    """IdkDPO: DPO with win = idk answer, lose = forget answer; -(2/beta) mean logsigmoid(beta(w - l)).

    w = log pi(idk) - log pi_ref(idk), l = log pi(y) - log pi_ref(y) (sequence sums).
    """
    nll_f_B, count_f_B = losses.sequence_nll(q["forget_logits"], q["forget_labels"])
    nll_i_B, count_i_B = losses.sequence_nll(q["idk_logits"], q["idk_labels"])
    B = nll_f_B.shape[0]
    if nll_i_B.shape[0] != B:
        raise ValueError(f"idk batch has {nll_i_B.shape[0]} rows but the forget batch has {B}")
    ref_f_B = jax.lax.stop_gradient(_check_batch("ref_forget_nll", q["ref_forget_nll"], B))
    ref_i_B = jax.lax.stop_gradient(_check_batch("ref_idk_nll", q["ref_idk_nll"], B))
    win_B = -(nll_i_B - ref_i_B)
    lose_B = -(nll_f_B - ref_f_B)
    per_B = -(2.0 / beta) * jax.nn.log_sigmoid(beta * (win_B - lose_B))
    valid_B = _has_targets(count_f_B) & _has_targets(count_i_B)
    loss = _seq_average(per_B, valid_B, compat)
    return loss, {
        "win_log_ratio": losses.masked_mean(win_B, valid_B),
        "lose_log_ratio": losses.masked_mean(lose_B, valid_B),
    }


def activation_mse(a_BTD: jax.Array, b_BTD: jax.Array, mask_BT: jax.Array, compat: bool = False) -> jax.Array:
    """RMU's masked MSE. With s_b = sum_t m_bt mean_d (a - b)^2 and n_b = sum_t m_bt:

    default: mean_b (s_b / n_b) over sequences with n_b > 0 (what the reference's comments intend);
    compat=True: mean_b(s_b) * mean_b(1 / n_b), what the reference computes ([B] / [B, 1] broadcasts
    to [B, B] before `.mean()`); equal when every sequence has the same number of target tokens.
    """
    a_BTD = jnp.asarray(a_BTD, jnp.float32)
    b_BTD = jnp.broadcast_to(jnp.asarray(b_BTD, jnp.float32), a_BTD.shape)
    if a_BTD.ndim != 3 or tuple(mask_BT.shape) != tuple(a_BTD.shape[:2]):
        raise ValueError(
            f"activation_mse: need [B, T, D] activations and a [B, T] mask, got "
            f"{tuple(a_BTD.shape)} and {tuple(mask_BT.shape)}"
        )
    per_BT = jnp.mean(jnp.square(a_BTD - b_BTD), axis=-1)
    if not compat:
        return losses.average_positions(per_BT, mask_BT, "sequence")
    s_B = jnp.sum(jnp.where(mask_BT, per_BT, 0.0), axis=-1)
    n_B = jnp.sum(mask_BT.astype(jnp.float32), axis=-1)
    valid_B = n_B > 0
    return losses.masked_mean(s_B, valid_B) * losses.masked_mean(1.0 / jnp.maximum(n_B, 1.0), valid_B)


def rmu(q: Batch, *, compat: bool = False) -> tuple[jax.Array, Aux]:
    """RMU forget term: masked MSE between layer activations on forget answers and `control_vec`."""
    h_BTD = jnp.asarray(q["forget_hidden"], jnp.float32)
    c_D = jnp.asarray(q["control_vec"], jnp.float32).reshape(-1)
    if h_BTD.ndim != 3 or c_D.shape[0] != h_BTD.shape[-1]:
        raise ValueError(
            f"rmu: control_vec must have D = {h_BTD.shape[-1]} entries, got {tuple(q['control_vec'].shape)}"
        )
    mask_BT = q["forget_labels"] != IGNORE
    loss = activation_mse(h_BTD, jax.lax.stop_gradient(c_D)[None, None, :], mask_BT, compat)
    return loss, {}


def rmu_control_vector(key: jax.Array, dim: int, steering_coeff: float = 2.0) -> jax.Array:
    """RMU direction: u / ||u|| * steering_coeff with u ~ Uniform[0, 1)^D (drawn once per run)."""
    u_D = jax.random.uniform(key, (dim,), jnp.float32)
    return u_D / jnp.linalg.norm(u_D) * steering_coeff


def undial(q: Batch, *, beta: float = 10.0, compat: bool = False) -> tuple[jax.Array, Aux]:
    """UNDIAL: CE(z, softmax(z_ref - beta * onehot(y))) on shifted rows (self-distillation).

    Default: mean over answer targets. compat=True: mean over all B*(T-1) rows with the reference's
    index wrap at label -100 (one-hot at token V-100; the reference needs V >= 100).
    """
    V = q["forget_logits"].shape[-1]
    if compat and V < -IGNORE:
        raise ValueError(f"undial compat: index wrap at label {IGNORE} needs V >= {-IGNORE}, got V={V}")
    z_BtV, targets_Bt, mask_Bt = losses.shift(q["forget_logits"], q["forget_labels"])
    ref_BTV = q["ref_forget_logits"]
    if tuple(ref_BTV.shape) != tuple(q["forget_logits"].shape):
        raise ValueError(
            f"undial: ref_forget_logits shape {tuple(ref_BTV.shape)} != forget_logits shape "
            f"{tuple(q['forget_logits'].shape)}"
        )
    zr_BtV = jax.lax.stop_gradient(ref_BTV[:, :-1]).astype(jnp.float32)
    if compat:
        raw_Bt = q["forget_labels"][:, 1:]
        idx_Bt = jnp.where(raw_Bt < 0, raw_Bt + V, raw_Bt)
    else:
        idx_Bt = targets_Bt
    soft_BtV = jax.nn.softmax(zr_BtV - beta * jax.nn.one_hot(idx_Bt, V, dtype=jnp.float32), axis=-1)
    ce_Bt = -jnp.sum(soft_BtV * jax.nn.log_softmax(z_BtV, axis=-1), axis=-1)
    loss = jnp.mean(ce_Bt) if compat else losses.masked_mean(ce_Bt, mask_Bt)
    return loss, {}


def ceu(q: Batch, *, ignore_first_n_answer_tokens: int = 1, compat: bool = False) -> tuple[jax.Array, Aux]:
    """CE-U: CE(z, softmax(stopgrad(z) with z[y] = -inf)), skipping the first n answer tokens."""
    labels_BT = q["forget_labels"]
    valid_BT = labels_BT != IGNORE
    first_n_BT = (jnp.cumsum(valid_BT.astype(jnp.int32), axis=-1) <= ignore_first_n_answer_tokens) & valid_BT
    z_BtV, targets_Bt, mask_Bt = losses.shift(q["forget_logits"], jnp.where(first_n_BT, IGNORE, labels_BT))
    V = z_BtV.shape[-1]
    is_y_BtV = jax.nn.one_hot(targets_Bt, V, dtype=bool)
    target_BtV = jax.nn.softmax(jnp.where(is_y_BtV, -jnp.inf, jax.lax.stop_gradient(z_BtV)), axis=-1)
    ce_Bt = -jnp.sum(target_BtV * jax.nn.log_softmax(z_BtV, axis=-1), axis=-1)
    return losses.masked_mean(ce_Bt, mask_Bt), {}


def wga(q: Batch, *, beta: float = 1.0, compat: bool = False) -> tuple[jax.Array, Aux]:
    """WGA: -mean_valid(w * l) with per-token CE l and w = stopgrad(exp(-l))^beta."""
    nll_Bt, mask_Bt = losses.token_nll(q["forget_logits"], q["forget_labels"])
    w_Bt = jax.lax.stop_gradient(jnp.exp(-nll_Bt)) ** beta
    return -losses.masked_mean(w_Bt * nll_Bt, mask_Bt), {"mean_weight": losses.masked_mean(w_Bt, mask_Bt)}


def satimp(
    q: Batch, *, beta1: float = 5.0, beta2: float = 1.0, compat: bool = False
) -> tuple[jax.Array, Aux]:
    """SatImp: -mean_valid(w * l), w = stopgrad(p)^beta1 * stopgrad(1 - p)^beta2, p = exp(-l)."""
    nll_Bt, mask_Bt = losses.token_nll(q["forget_logits"], q["forget_labels"])
    p_Bt = jax.lax.stop_gradient(jnp.exp(-nll_Bt))
    w_Bt = p_Bt**beta1 * (1.0 - p_Bt) ** beta2
    return -losses.masked_mean(w_Bt * nll_Bt, mask_Bt), {"mean_weight": losses.masked_mean(w_Bt, mask_Bt)}


def pdu(
    q: Batch,
    *,
    shifted: bool = True,
    average: losses.Average = "token",
    tie: losses.Tie = "split",
    compat: bool = False,
) -> tuple[jax.Array, Aux]:
    """PDU forget term: logit-margin flattening (compat: unshifted rows, torch.max-like ties)."""
    if compat:
        shifted, tie = False, "first"
    loss = losses.logit_margin(
        q["forget_logits"], q["forget_labels"], shifted=shifted, average=average, tie=tie
    )
    return loss, {}


def pdu_entropy(
    q: Batch, *, shifted: bool = True, average: losses.Average = "token", compat: bool = False
) -> tuple[jax.Array, Aux]:
    """PDU ablation: minus the mean softmax entropy over answer rows (compat: unshifted rows)."""
    if compat:
        shifted = False
    loss = losses.entropy_forget(q["forget_logits"], q["forget_labels"], shifted=shifted, average=average)
    return loss, {"forget_entropy": -loss}


# ----------------------------------------------------------------------------------------- retain losses

RETAIN_INPUTS: dict[str, tuple[str, ...]] = {
    "nll": ("retain_logits", "retain_labels"),
    "kl": ("retain_logits", "retain_labels", "ref_retain_logits"),
    "embed_diff": ("retain_hidden", "ref_retain_hidden", "retain_labels"),
}
# Rows each retain loss reads outside compat mode: "answers" = only the logits rows that predict an
# answer token (the LM head may skip the others, answer_rows.py); "all" = other rows or hidden states.
RETAIN_ROWS: dict[str, str] = {"nll": "answers", "kl": "answers", "embed_diff": "all"}


def retain_loss(kind: str, q: Batch, *, compat: bool = False) -> jax.Array:
    """Retain term: "nll" = HF token-mean CE; "kl" = KL(p_ref‖p) (see module table); "embed_diff" = RMU
    masked MSE between policy and reference activations on retain answers."""
    if kind not in RETAIN_INPUTS:
        raise ValueError(f"unknown retain loss {kind!r}; expected one of {tuple(RETAIN_INPUTS)}")
    require_inputs(q, RETAIN_INPUTS[kind], f"retain loss {kind!r}")
    if kind == "nll":
        return losses.token_ce_mean(q["retain_logits"], q["retain_labels"])
    if kind == "kl":
        if compat:
            return losses.kl_to_reference(q["retain_logits"], q["ref_retain_logits"])
        return losses.kl_on_targets(q["retain_logits"], q["ref_retain_logits"], q["retain_labels"])
    mask_BT = q["retain_labels"] != IGNORE
    return activation_mse(q["retain_hidden"], jax.lax.stop_gradient(q["ref_retain_hidden"]), mask_BT, compat)


def scalarised(
    forget: jax.Array, retain: jax.Array | float, gamma: float = 1.0, alpha: float = 1.0
) -> jax.Array:
    """Baselines' objective gamma * L_f + alpha * L_r."""
    return gamma * forget + alpha * retain


def require_inputs(q: Batch, keys: tuple[str, ...], what: str) -> None:
    """ValueError naming the inputs a loss needs and the ones missing from `q`."""
    missing = [k for k in keys if k not in q]
    if missing:
        raise ValueError(f"{what} needs inputs {list(keys)}; missing {missing}")
