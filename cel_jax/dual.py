"""Lagrangian and dual-variable (lambda) updates of the primal-dual unlearning (PDU) method.

Axes: M micro-batches. Every function is pure; lam, eps, lr and `active` may be traced scalars, so a
jitted step never recompiles when they change (only `lam_max is None` vs a value is static).

Reference semantics (open-unlearning `pdu.py`): the primal gradient uses the old lam_k, then
lam_{k+1} = max(0, lam_k + lr * (L_r - eps)) with L_r from the same forward, once per micro-batch,
and only after `dual_warmup_epochs` epochs (lam is held at lam0 before, "warm start").
"""

import math

import jax
import jax.numpy as jnp

DUAL_MODES = ("step", "microbatch", "epoch", "fixed")
"""step: one update per optimiser step from the step's mean retain loss; microbatch: one update per
micro-batch (reference parity under gradient accumulation); epoch: one update per epoch from the mean
retain loss of a pass; fixed: lam never changes (scalarised training with weight lam0)."""

Scalar = float | jax.Array


def lagrangian(
    forget_loss: Scalar, retain_loss: Scalar, lam: Scalar, eps: Scalar, gamma: Scalar = 1.0
) -> jax.Array:
    """gamma * L_f + lam * (L_r - eps), fp32. Its gradient in lam is the dual ascent direction L_r - eps."""
    lam = jnp.asarray(lam, jnp.float32)
    return gamma * jnp.asarray(forget_loss, jnp.float32) + lam * (jnp.asarray(retain_loss, jnp.float32) - eps)


def dual_update(
    lam: Scalar,
    retain_loss: Scalar,
    eps: Scalar,
    lr: Scalar,
    active: bool | jax.Array = True,
    lam_max: Scalar | None = None,
) -> jax.Array:
    """Projected dual ascent: where(active, min(max(0, lam + lr*(L_r - eps)), lam_max), lam), fp32."""
    lam = jnp.asarray(lam, jnp.float32)
    l_r = jax.lax.stop_gradient(jnp.asarray(retain_loss, jnp.float32))
    new = jnp.maximum(0.0, lam + lr * (l_r - eps))
    if lam_max is not None:
        new = jnp.minimum(new, jnp.asarray(lam_max, jnp.float32))
    return jnp.where(active, new, lam)


def per_microbatch_dual(
    lam: Scalar,
    retain_losses_M: jax.Array,
    eps: Scalar,
    lr: Scalar,
    active: bool | jax.Array = True,
    lam_max: Scalar | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One dual update per micro-batch, in order (reference under gradient accumulation).

    Returns (lams_M, final_lam): lams_M[m] is the lam that micro-batch m's primal loss uses (the value
    before its own update). `active` is a scalar or one flag per micro-batch.
    """
    losses_M = jnp.asarray(retain_losses_M, jnp.float32)
    if losses_M.ndim != 1:
        raise ValueError(f"retain_losses_M must be 1-D [M], got shape {tuple(losses_M.shape)}")
    active_M = jnp.broadcast_to(jnp.asarray(active, bool), losses_M.shape)

    def body(lam_c, x):
        l_r, act = x
        return dual_update(lam_c, l_r, eps, lr, act, lam_max), lam_c

    final, lams_M = jax.lax.scan(body, jnp.asarray(lam, jnp.float32), (losses_M, active_M))
    return lams_M, final


def epoch_dual_update(
    lam: Scalar,
    retain_losses: jax.Array,
    eps: Scalar,
    lr: Scalar,
    active: bool | jax.Array = True,
    lam_max: Scalar | None = None,
) -> jax.Array:
    """Epoch mode: one update from the mean of the per-batch retain losses of one pass."""
    mean_l_r = jnp.mean(jnp.asarray(retain_losses, jnp.float32))
    return dual_update(lam, mean_l_r, eps, lr, active, lam_max)


def dual_active(epochs_completed: Scalar, warmup_epochs: Scalar) -> jax.Array:
    """Warm start gate: the reference enables updates at the end of epoch e (1-based) once e >= W."""
    return jnp.asarray(epochs_completed) >= warmup_epochs


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def eps_from_reference(ref_retain_loss: Scalar, alpha: Scalar) -> float:
    """Paper's constraint level eps = (1 + alpha) * L_r(pi_ref), with alpha >= 0 the tolerance."""
    if not _finite(ref_retain_loss) or float(ref_retain_loss) <= 0.0:
        raise ValueError(f"ref_retain_loss must be a finite positive number, got {ref_retain_loss!r}")
    if not _finite(alpha) or float(alpha) < 0.0:
        raise ValueError(f"alpha (relative tolerance) must be finite and >= 0, got {alpha!r}")
    return (1.0 + float(alpha)) * float(ref_retain_loss)


def validate_dual_config(
    eps: Scalar, lr: Scalar, lam0: Scalar, lam_max: Scalar | None = None, mode: str = "step"
) -> None:
    """Raise ValueError for out-of-range dual settings (host-side check of Python numbers)."""
    if mode not in DUAL_MODES:
        raise ValueError(f"unknown dual update mode {mode!r}; expected one of {DUAL_MODES}")
    if not _finite(eps) or float(eps) <= 0.0:
        raise ValueError(f"eps (retain-loss bound) must be finite and > 0, got {eps!r}")
    if not _finite(lr) or float(lr) < 0.0:
        raise ValueError(f"dual step size lr must be finite and >= 0, got {lr!r}")
    if not _finite(lam0) or float(lam0) < 0.0:
        raise ValueError(f"lam0 (initial dual variable) must be finite and >= 0, got {lam0!r}")
    if lam_max is not None:
        try:
            lam_max_f = float(lam_max)
        except (TypeError, ValueError):
            raise ValueError(f"lam_max must be a number or None, got {lam_max!r}") from None
        if math.isnan(lam_max_f) or lam_max_f <= 0.0:
            raise ValueError(f"lam_max must be > 0 (or None for no bound), got {lam_max!r}")
        if lam_max_f < float(lam0):
            raise ValueError(f"lam_max={lam_max!r} is below lam0={lam0!r}")
