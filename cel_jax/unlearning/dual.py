"""The dual side of PDU: min_θ L_f(θ) s.t. L_r(θ) ≤ ε, on the Lagrangian
L(θ, λ) = s·L_f + λ (L_r − ε), descent on θ and a projected ascent rule on λ ∈ [0, λ_max].

Axes: M micro-batches. Every function here is pure and jit-safe. The dual state (λ and the rule's own
state) is a small replicated pytree inside the train state: identical on every host (it only sees
global means), checkpointed and resumed with the weights.

Rules (`cfg.dual.rule`); each is an optax transformation of the dual "gradient" −v, v = L_r − ε the
constraint violation, followed by the projection onto [0, λ_max]:
  gda  the authors' projected gradient ascent λ ← [λ + η v]₊ (open-unlearning `pdu.py`), exact.
  pi   νPI (Sohrabi et al., ICML 2024, "On PI Controllers for Updating Lagrange Multipliers"):
       ξ_t = ν ξ_{t−1} + (1−ν) v_t (ξ_{−1} = 0),  λ ← [λ + η (v_t + κ_p (ξ_t − ξ_{t−1}))]₊.
       The integral part is gda; the proportional part moves λ with the violation itself, so λ rises
       as soon as the retain loss crosses ε and falls back once it is under (no wind-up overshoot).
       κ_p = 0 is gda exactly.
  alm  augmented Lagrangian (PHR form for an inequality): the primal minimises s·L_f + ψ_ρ(v, λ),
       ψ_ρ = ([λ + ρ v]₊² − λ²) / (2ρ), whose θ-gradient is [λ + ρ v]₊ ∇L_r: a quadratic penalty on
       the violation with its own coefficient ρ; λ itself follows gda.
`s` is the forget-loss scale: 1, or 1 / L_f(θ₀) with `dual.normalize_forget` so the forget term starts
at 1 whatever the model and λ0, η mean the same thing on every model (the logit-margin loss is ~10²–10³).
With `dual.relative` the constraint is written L_r / ε − 1 ≤ 0 (the same feasible set): v is then a
fraction of ε, so the gains do not depend on the retain loss's scale either (ε = 0.13 or 2.6).

When the rule runs (`cfg.dual.mode`): "step" once per optimizer step on the step's mean L_r;
"microbatch" once per micro-batch (the reference under gradient accumulation); "epoch" once per epoch
on a full pass of the epoch's retain partners; "fixed" never (scalarised training with λ0).
`advance` below is the one function every mode calls, at each point of the schedule: it runs `update`
where the mode's point is reached, and is a no-op elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

RULES = ("gda", "pi", "alm")
MODES = ("step", "microbatch", "epoch", "fixed")
DUAL_KEYS = (  # every dual setting lives in cfg.dual; method_args naming one of these is an error
    "rule",
    "lam0",
    "lr",
    "kp",
    "nu",
    "rho",
    "eps",
    "eps_alpha",
    "eps_ref_items",
    "lam_max",
    "warmup_epochs",
    "mode",
    "normalize_forget",
    "relative",
    "tolerance",
)
METHOD_ARG_ALIASES = {  # the reference's names for the same settings -> our cfg.dual key
    "lam0": "lam0",
    "dual_lr": "lr",
    "dual_step_size": "lr",
    "eps": "eps",
    "retain_loss_eps": "eps",
    "dual_mode": "mode",
    "dual_update_upon": "mode",
    "dual_warmup_epochs": "warmup_epochs",
}

Scalar = float | jax.Array


@dataclasses.dataclass(frozen=True)
class Rule:
    """Static (hashable) description of the dual rule: part of the compiled step."""

    name: str = "gda"
    lr: float = 1.0  # η: the integral gain
    kp: float = 0.0  # νPI proportional gain κ_p
    nu: float = 0.0  # νPI EMA coefficient ν of the violation
    rho: float = 1.0  # alm penalty coefficient ρ
    lam_max: float | None = None
    relative: bool = False  # constraint L_r / ε − 1 ≤ 0 (dimensionless) instead of L_r − ε ≤ 0


@struct.dataclass
class DualState:
    lam: jax.Array  # float32 λ ≥ 0, the multiplier the next primal step uses
    opt: Any  # the rule's optax state (νPI: ξ_{t−1})


class NuPIState(NamedTuple):
    xi: jax.Array  # ξ_{t−1}, the smoothed error before this update


def nupi(lr: float, kp: float, nu: float = 0.0) -> optax.GradientTransformation:
    """νPI as an optax transformation (minimises: the error e_t is the gradient, updates = −η(...))."""

    def init(params):
        return NuPIState(xi=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        xi = jax.tree.map(lambda x, e: nu * x + (1.0 - nu) * e, state.xi, grads)
        upd = jax.tree.map(lambda e, x, x0: -lr * (e + kp * (x - x0)), grads, xi, state.xi)
        return upd, NuPIState(xi=xi)

    return optax.GradientTransformation(init, update)


def transformation(rule: Rule) -> optax.GradientTransformation:
    if rule.name == "pi":
        return nupi(rule.lr, rule.kp, rule.nu)
    return optax.sgd(rule.lr)  # gda, and alm's multiplier step


def init(rule: Rule, lam0: Scalar) -> DualState:
    lam = jnp.asarray(lam0, jnp.float32)
    return DualState(lam=lam, opt=transformation(rule).init(lam))


def update(rule: Rule, state: DualState, violation: Scalar, active: bool | jax.Array = True) -> DualState:
    """One dual step from the violation v = L_r − ε (no gradient flows into v); a no-op where not
    `active` (warm start, filler micro-batches)."""
    v = jax.lax.stop_gradient(jnp.asarray(violation, jnp.float32))
    upd, opt = transformation(rule).update(-v, state.opt, state.lam)  # ascent: the gradient is −v
    lam = jnp.maximum(0.0, optax.apply_updates(state.lam, upd))
    if rule.lam_max is not None:
        lam = jnp.minimum(lam, jnp.float32(rule.lam_max))
    new = DualState(lam=lam, opt=opt)
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)


def advance(
    rule: Rule,
    mode: str,
    at: str,
    state: DualState,
    retain_loss: Scalar,
    eps: Scalar,
    active: bool | jax.Array = True,
) -> DualState:
    """The dual step of `mode` ("step" | "microbatch" | "epoch" | "fixed") at point `at` of the schedule
    ("microbatch", "step" or "epoch", with that point's mean retain loss): one `update` on the violation
    where `at == mode`, the state unchanged elsewhere (and always under "fixed")."""
    if mode != at:
        return state
    return update(rule, state, violation(rule, retain_loss, eps), active)


def violation(rule: Rule, retain_loss: Scalar, eps: Scalar) -> jax.Array:
    """The constraint's value v (≤ 0 when satisfied): L_r − ε, or L_r / ε − 1 with `dual.relative`."""
    v = jnp.asarray(retain_loss, jnp.float32) - eps
    if not rule.relative:
        return v
    eps = jnp.asarray(eps, jnp.float32)
    return jnp.where(eps > 0, v / jnp.where(eps > 0, eps, 1.0), v)  # ε = 0: scalarised runs, no bound


def lagrangian(
    rule: Rule,
    forget_loss: Scalar,
    retain_loss: Scalar,
    lam: Scalar,
    eps: Scalar,
    forget_weight: Scalar = 1.0,
) -> jax.Array:
    """The primal objective, fp32: w·L_f + λ (L_r − ε) (gda, pi) or w·L_f + ψ_ρ(L_r − ε, λ) (alm)."""
    lam = jax.lax.stop_gradient(jnp.asarray(lam, jnp.float32))
    f = jnp.asarray(forget_weight, jnp.float32) * jnp.asarray(forget_loss, jnp.float32)
    v = violation(rule, retain_loss, eps)
    if rule.name == "alm":
        return f + (jnp.square(jnp.maximum(0.0, lam + rule.rho * v)) - jnp.square(lam)) / (2.0 * rule.rho)
    return f + lam * v


def effective_multiplier(rule: Rule, lam: Scalar, violation: Scalar) -> jax.Array:
    """The weight the primal gradient puts on ∇L_r: λ, or [λ + ρ v]₊ for alm (logged as `dual_eff`)."""
    lam = jnp.asarray(lam, jnp.float32)
    if rule.name == "alm":
        return jnp.maximum(0.0, lam + rule.rho * jnp.asarray(violation, jnp.float32))
    return lam


def rule_from_config(d) -> Rule:
    lam_max = d.get("lam_max")
    return Rule(
        name=str(d.get("rule", "gda")),
        lr=float(d.lr),
        kp=float(d.get("kp", 0.0) or 0.0),
        nu=float(d.get("nu", 0.0) or 0.0),
        rho=float(d.get("rho", 1.0) or 1.0),
        lam_max=None if lam_max is None else float(lam_max),
        relative=bool(d.get("relative", False)),
    )


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


def validate(d) -> None:
    """Host-side checks of a `cfg.dual` section (Python numbers), with the key in every message."""
    rule, mode = d.get("rule", "gda"), d.get("mode", "step")
    if rule not in RULES:
        raise ValueError(f"dual.rule must be one of {RULES}, got {rule!r}")
    if mode not in MODES:
        raise ValueError(f"dual.mode must be one of {MODES}, got {mode!r}")
    if d.get("eps") is not None and (not _finite(d.eps) or float(d.eps) <= 0.0):
        raise ValueError(f"dual.eps (retain-loss bound) must be finite and > 0, got {d.eps!r}")
    checks = {
        "lr": (d.lr, 0.0, False),
        "lam0": (d.lam0, 0.0, False),
        "kp": (d.get("kp", 0.0), 0.0, False),
        "rho": (d.get("rho", 1.0), 0.0, True),
        "tolerance": (d.get("tolerance", 0.0), 0.0, False),
        "warmup_epochs": (d.get("warmup_epochs", 0), 0.0, False),
    }
    for key, (x, low, strict) in checks.items():
        if not _finite(x) or (float(x) <= low if strict else float(x) < low):
            raise ValueError(
                f"dual.{key} must be a finite number {'>' if strict else '>='} {low:g}, got {x!r}"
            )
    nu = d.get("nu", 0.0)
    if not _finite(nu) or not 0.0 <= float(nu) < 1.0:
        raise ValueError(f"dual.nu (νPI EMA coefficient) must be in [0, 1), got {nu!r}")
    lam_max = d.get("lam_max")
    if lam_max is not None:
        if not _finite(lam_max) and lam_max != float("inf") or float(lam_max) <= 0.0:
            raise ValueError(f"dual.lam_max must be > 0 (or None for no bound), got {lam_max!r}")
        if float(lam_max) < float(d.lam0):
            raise ValueError(f"dual.lam_max={lam_max!r} is below dual.lam0={d.lam0!r}")
    if d.get("eps") is not None and d.get("eps_alpha") is not None:
        raise ValueError("give either dual.eps (absolute) or dual.eps_alpha (relative), not both")
    if d.get("eps_alpha") is not None and (not _finite(d.eps_alpha) or float(d.eps_alpha) < 0.0):
        raise ValueError(f"dual.eps_alpha must be >= 0, got {d.eps_alpha!r}")


def reject_dual_method_args(method_args: dict) -> None:
    """Dual settings in `method_args` were silently ignored; now they name the right key."""
    for k in method_args:
        if k in METHOD_ARG_ALIASES or k in DUAL_KEYS:
            right = METHOD_ARG_ALIASES.get(k, k)
            raise ValueError(
                f"method_args.{k} is a dual setting: set --config.dual.{right}=... instead "
                "(every dual setting lives in cfg.dual)"
            )
