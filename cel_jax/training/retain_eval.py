"""Retain-loss passes without gradient: ε's reference pass, the epoch-mode dual's pass over an epoch's
retain partners, and the final model's check (token-weighted means over many batches).

Axes: B batch, T length.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from cel_jax.data.train_data import TrainData, prepare_data
from cel_jax.scale import sharding
from cel_jax.training.batches import to_global
from cel_jax.unlearning import dual as dual_lib
from cel_jax.unlearning import step as step_lib


@functools.lru_cache(maxsize=4)
def _retain_nll_fn(graphdef):
    """One jitted retain forward per model structure: ε's reference pass, every epoch-mode pass and the
    final model's check reuse its compiled programs instead of tracing a new function each time."""
    return jax.jit(lambda p, part: step_lib.retain_nll_sums(p, part, graphdef))


def token_mean_over(params, graphdef, batches, mesh) -> float:
    f = _retain_nll_fn(graphdef)
    tot, n = 0.0, 0
    for b in batches:
        b = jax.tree.map(lambda x: x[None], b)
        s, c = f(params, jax.tree.map(lambda x: x[0], to_global(b, mesh)))
        tot, n = tot + float(s), n + int(c)
    if n == 0:
        raise ValueError("the retain set has no answer tokens")
    return tot / n


def reference_retain_loss(cfg, params, graphdef, td: TrainData, mesh) -> float:
    """L_r of `params` on the rows ε is measured on (the retain set, or its first dual.eps_ref_items)."""
    return token_mean_over(params, graphdef, td.retain_batches(cfg.batch_size, cfg.dual.eps_ref_items), mesh)


def retain_pass(params, graphdef, td: TrainData, cfg, mesh, epoch: int) -> float:
    """Epoch mode: mean retain loss over the retain partners of one pass (no gradient)."""
    return token_mean_over(params, graphdef, td.partner_batches(epoch, cfg.batch_size), mesh)


def initial_eps(cfg, mode, params, graphdef, td: TrainData, mesh) -> float:
    """ε of the run (stored in the checkpoint). Scalarised runs that name one get it too, so their
    feasibility report is against the same bound as a constrained run's; 0 means none."""
    if mode != "unlearn" or (cfg.dual.eps is None and cfg.dual.eps_alpha is None):
        return 0.0
    if cfg.dual.eps is not None:
        return float(cfg.dual.eps)
    ref_loss = reference_retain_loss(cfg, params, graphdef, td, mesh)
    eps = dual_lib.eps_from_reference(ref_loss, cfg.dual.eps_alpha)
    print(
        f"eps = (1 + {cfg.dual.eps_alpha}) * L_r(pi_ref) = (1 + {cfg.dual.eps_alpha}) * {ref_loss:.4f}"
        f" = {eps:.4f}"
    )
    return eps


def retain_losses(cfg, model_dir: str, epoch: int) -> dict:
    """An unlearning config's retain losses for the weights in `model_dir` (a finished run's export, or
    its target): `eps_rows`, on the rows ε is measured on; `partners`, on the retain partners of `epoch`
    (the rows whose training losses that epoch's feasibility mean averages)."""
    from cel_jax.model import hf_io

    mesh = sharding.make_mesh(cfg.mesh.shape)
    model, tok = hf_io.load_pretrained(
        str(model_dir), dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, mesh=mesh
    )
    td = prepare_data(cfg, tok, "unlearn")
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    return {
        "eps_rows": reference_retain_loss(cfg, params, graphdef, td, mesh),
        "partners": retain_pass(params, graphdef, td, cfg, mesh, epoch),
    }
