"""Our jitted unlearning step as the training loop builds it (make_jax_step), its separate trace / compile
(compile_step) and one timed optimizer step (run_step). make_jax_step is the one place that wires the
step: swapping in another engine is an edit of that function alone."""

from __future__ import annotations

import time

from bench.throughput.common import timed


def _unlearn_cfg(method: str, solver: str, lam0: float, eps: float, dual_lr: float):
    """The unlearn config of one benchmarked step: method, solver and the authors' dual (gda, mode step)."""
    from cel_jax import config_base

    cfg = config_base.unlearn_config()
    cfg.method, cfg.solver = method, solver
    # the authors' Lagrangian L_f + λ (L_r − ε) with gda, as the PyTorch reference step computes it
    cfg.dual = config_base.authors_dual(lam0=lam0, eps=eps, lr=dual_lr, mode="step")
    return cfg


def make_jax_step(
    model,
    method: str,
    solver: str,
    batch: dict,
    *,
    lam0: float = 1.0,
    eps: float = 1.0,
    dual_lr: float = 1.0,
    params=None,
    lm_head_rows: str = "answers",
) -> dict:
    """The training loop's step, built by the engine the loop uses (cel_jax.training.engine.build): the
    method record, the answer-row plan of this batch (none with lm_head_rows="all"), the optax chain, the
    state and the jitted step (state donated). `params` (pure dict) defaults to the model's own arrays."""
    from cel_jax.training import engine

    cfg = _unlearn_cfg(method, solver, lam0, eps, dual_lr)
    cfg.lm_head_rows = lm_head_rows
    graphdef, own = engine.split(model)
    params = own if params is None else params
    labels = {p: part["labels"].reshape(-1, part["labels"].shape[-1]) for p, part in batch.items()}
    eng = engine.build(cfg, model.cfg, graphdef, params, "unlearn", labels=labels, steps=(10_000, 0))
    return {
        "fn": eng.step,
        "state": eng.make_state(params, eps),
        "hp": eng.hp(True),
        "spec": eng.spec,
        "graphdef": graphdef,
        "tx": eng.tx,
    }


def compile_step(st: dict, batch: dict) -> dict:
    """Trace+lower and XLA-compile separately (timed); st["compiled"] replaces the lazy jit call."""
    import jax

    b = jax.device_put(batch)
    lowered, t_lower = timed(lambda: st["fn"].lower(st["state"], b, st["hp"], None, {}))
    compiled, t_comp = timed(lowered.compile)
    st["compiled"] = compiled
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return {"trace_lower_s": t_lower, "compile_s": t_comp, "xla_flops": flops}


def run_step(st: dict, batch: dict) -> tuple[float, float, float]:
    """One optimizer step as the loop runs it (host batch -> device, dispatch, wait, fetch the loss).
    Returns (seconds, dispatch seconds, loss)."""
    import jax

    t0 = time.perf_counter()
    state, metrics = st["compiled"](st["state"], jax.device_put(batch), st["hp"], None, {})
    t_dispatch = time.perf_counter() - t0
    jax.block_until_ready(state)
    loss = float(metrics["loss"])
    st["state"] = state
    return time.perf_counter() - t0, t_dispatch, loss


def jnp_copy(x):
    """A fresh copy of an array leaf: a state built from it survives the donation of the original."""
    return x.copy()
