"""The primal optimiser: optax chain (global-norm clip, AdamW without decay on norms/biases, linear
warmup then linear decay), as the reference's HF Trainer defaults."""

from __future__ import annotations

import jax
import optax


def lr_schedule(lr: float, total_steps: int, warmup_steps: int, kind: str = "linear") -> optax.Schedule:
    """HF `linear`: 0 -> lr over warmup_steps, then lr -> 0 at total_steps; `constant`: warmup then lr."""
    if kind not in ("linear", "constant"):
        raise ValueError(f"unknown lr schedule {kind!r} (linear | constant)")
    warmup_steps = max(0, int(warmup_steps))
    decay_steps = max(1, int(total_steps) - warmup_steps)
    after = optax.linear_schedule(lr, 0.0, decay_steps) if kind == "linear" else optax.constant_schedule(lr)
    if warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), after], [warmup_steps])


def decay_mask(params):
    """Weight decay on matrices only (HF: no decay on biases and norm weights)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt_cfg, total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
    sched = lr_schedule(opt_cfg.lr, total_steps, warmup_steps, opt_cfg.get("schedule", "linear"))
    chain = []
    if opt_cfg.get("clip", 1.0):
        chain.append(optax.clip_by_global_norm(opt_cfg.clip))
    chain.append(
        optax.adamw(
            sched,
            b1=opt_cfg.get("b1", 0.9),
            b2=opt_cfg.get("b2", 0.999),
            eps=opt_cfg.get("eps", 1e-8),
            weight_decay=opt_cfg.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*chain)
