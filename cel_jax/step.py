"""Train state, the Lagrangian objective and the jitted primal–dual step (pure functions).

Axes: M micro-batches per optimizer step, B micro-batch size, T length, V vocab, D model.
One optimizer step = a `lax.scan` over M micro-batches accumulating gradients, then one optax update.
The primal gradient uses the old λ; the dual update runs inside the same jitted step:
  mode "step":       λ ← [λ + η (mean_m L_r,m − ε)]_+ once per step (the global-batch retain loss, so λ
                     is identical on every host; the reference updates per micro-batch and per GPU).
  mode "microbatch": λ updated after each micro-batch (the reference's semantics), later micro-batches
                     of the same step already use the new λ.
  mode "epoch"/"fixed": λ is not touched here ("epoch" is updated by the loop at epoch ends).
λ, ε, η, the upper bound and the warm-start flag are traced values: changing them never recompiles.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from cel_jax import answer_rows, losses, methods
from cel_jax import dual as dual_lib

TRACE_COUNT: collections.Counter = collections.Counter()  # compilations per step kind (tests count them)


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 optimizer steps done
    params: Any  # pure dict of arrays (nnx.to_pure_dict of the model's Params)
    opt_state: Any
    dual: jax.Array  # float32 λ (replicated)
    eps: jax.Array  # float32 ε (replicated)
    rng: jax.Array  # uint32[2] key data


@struct.dataclass
class StepSpec:
    """Static description of the objective (part of the compiled program)."""

    method: str = struct.field(pytree_node=False)
    solver: str = struct.field(pytree_node=False)  # primal_dual | scalarized | finetune
    dual_mode: str = struct.field(pytree_node=False)  # step | microbatch | epoch | fixed
    retain_kind: str | None = struct.field(pytree_node=False)
    forget_hp: tuple = struct.field(pytree_node=False)  # ((name, value), ...) method hyper-parameters
    gamma: float = struct.field(pytree_node=False, default=1.0)
    alpha: float = struct.field(pytree_node=False, default=1.0)
    hidden_layer: int | None = struct.field(pytree_node=False, default=None)
    compat: bool = struct.field(pytree_node=False, default=False)
    # ((part, capacity), ...): parts whose LM head runs on answer-predicting rows only (answer_rows.py)
    answer_rows: tuple = struct.field(pytree_node=False, default=())


def _forward(model, part, hidden_layer):
    """(logits, hidden or None); logits [B, C, V] on the gathered rows when the part has `rows`."""
    if "rows" in part:
        if hidden_layer is not None:
            raise ValueError("answer-row compaction does not apply to hidden-state losses")
        return answer_rows.logits_on_rows(
            model, part["input_ids"], part["attention_mask"], part["rows"]
        ), None
    if hidden_layer is None:
        return model(part["input_ids"], part["attention_mask"]), None
    return model(part["input_ids"], part["attention_mask"], hidden_layer=hidden_layer)


def needed_reference(spec: StepSpec) -> set[str]:
    if spec.solver == "finetune":
        return set()
    m = methods.get_method(spec.method)
    need = {k for k in m.forget_inputs if k.startswith("ref_")}
    if spec.retain_kind == "kl":
        need.add("ref_retain_logits")
    if spec.retain_kind == "embed_diff":
        need.add("ref_retain_hidden")
    return need


def reference_quantities(graphdef, ref_params, mb, spec: StepSpec) -> dict:
    """Frozen reference outputs for one micro-batch: one forward per batch part at most, no gradient."""
    need = needed_reference(spec)
    if not need:
        return {}
    ref = nnx.merge(graphdef, jax.lax.stop_gradient(ref_params))
    out = {}
    if need & {"ref_forget_logits", "ref_forget_nll"}:
        logits, _ = _forward(ref, mb["forget"], None)
        if "ref_forget_logits" in need:
            out["ref_forget_logits"] = logits
        if "ref_forget_nll" in need:
            out["ref_forget_nll"] = losses.sequence_nll(logits, mb["forget"]["labels"])[0]
    if "ref_idk_nll" in need:
        logits, _ = _forward(ref, mb["idk"], None)
        out["ref_idk_nll"] = losses.sequence_nll(logits, mb["idk"]["labels"])[0]
    if need & {"ref_retain_logits", "ref_retain_hidden"}:
        layer = spec.hidden_layer if "ref_retain_hidden" in need else None
        logits, hidden = _forward(ref, mb["retain"], layer)
        if "ref_retain_logits" in need:
            out["ref_retain_logits"] = logits
        if "ref_retain_hidden" in need:
            out["ref_retain_hidden"] = hidden
    return jax.lax.stop_gradient(out)


def objective(params, lam, eps, mb, ref, consts, graphdef, spec: StepSpec):
    """(scalar objective, (forget_loss, retain_loss)) for one micro-batch."""
    model = nnx.merge(graphdef, params)
    if spec.solver == "finetune":
        logits, _ = _forward(model, mb["forget"], None)
        loss = losses.token_ce_mean(logits, mb["forget"]["labels"])
        return loss, (loss, jnp.float32(jnp.nan))
    layer = spec.hidden_layer
    q = dict(ref)
    q.update(consts)
    f_logits, f_hidden = _forward(model, mb["forget"], layer)
    q.update(forget_logits=f_logits, forget_labels=mb["forget"]["labels"])
    if f_hidden is not None:
        q["forget_hidden"] = f_hidden
    if "idk" in mb:
        q.update(idk_logits=_forward(model, mb["idk"], None)[0], idk_labels=mb["idk"]["labels"])
    l_f, _ = methods.forget_loss(spec.method, q, compat=spec.compat, **dict(spec.forget_hp))
    if spec.retain_kind is None:
        l_r = jnp.float32(0.0)
    else:
        r_logits, r_hidden = _forward(
            model, mb["retain"], layer if spec.retain_kind == "embed_diff" else None
        )
        q.update(retain_logits=r_logits, retain_labels=mb["retain"]["labels"])
        if r_hidden is not None:
            q["retain_hidden"] = r_hidden
        l_r = methods.retain_loss(spec.retain_kind, q, compat=spec.compat)
    if spec.solver == "primal_dual":
        obj = dual_lib.lagrangian(l_f, l_r, lam, eps, spec.gamma)
    else:
        obj = methods.scalarised(l_f, l_r, spec.gamma, spec.alpha)
    return obj, (l_f.astype(jnp.float32), l_r.astype(jnp.float32))


def train_step(state: TrainState, batch, hp, ref_params, consts, *, graphdef, tx, spec: StepSpec):
    """One optimizer step over M stacked micro-batches. hp: traced {dual_lr, dual_active, lam_max}."""
    TRACE_COUNT[spec.solver] += 1
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    zeros = jax.tree.map(jnp.zeros_like, state.params)

    def micro(carry, mb):
        g_acc, lam = carry
        mb = answer_rows.compact_batch(mb, spec.answer_rows)
        ref = reference_quantities(graphdef, ref_params, mb, spec) if ref_params is not None else {}
        (obj, (l_f, l_r)), g = grad_fn(state.params, lam, state.eps, mb, ref, consts, graphdef, spec)
        lam_next = lam
        if spec.dual_mode == "microbatch" and spec.solver == "primal_dual":
            lam_next = dual_lib.dual_update(
                lam, l_r, state.eps, hp["dual_lr"], hp["dual_active"], hp["lam_max"]
            )
        g_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_acc, g)
        return (g_acc, lam_next), (obj, l_f, l_r, lam)

    (g_sum, lam_end), (objs, l_fs, l_rs, lams) = jax.lax.scan(micro, (zeros, state.dual), batch)
    n_micro = objs.shape[0]
    grads = jax.tree.map(lambda g: g / n_micro, g_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    l_r = jnp.mean(l_rs)
    if spec.solver != "primal_dual":
        dual_next = state.dual
    elif spec.dual_mode == "step":
        dual_next = dual_lib.dual_update(
            state.dual, l_r, state.eps, hp["dual_lr"], hp["dual_active"], hp["lam_max"]
        )
    elif spec.dual_mode == "microbatch":
        dual_next = lam_end
    else:
        dual_next = state.dual
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, dual=dual_next)
    metrics = {
        "loss": jnp.mean(objs),
        "forget_loss": jnp.mean(l_fs),
        "retain_loss": l_r,
        "retain_loss_micro": l_rs,
        "dual_micro": lams,
        "dual": state.dual,
        "dual_next": dual_next,
        "grad_norm": optax.tree.norm(grads),
    }
    return new, metrics


def retain_nll_sums(params, part, graphdef):
    """(sum of answer-token NLL, number of answer tokens) of a batch: for ε = (1+α)·L_r(π_ref) and the
    epoch-mode dual update (token-weighted means over many batches)."""
    model = nnx.merge(graphdef, params)
    logits = model(part["input_ids"], part["attention_mask"])
    nll_B, n_B = losses.sequence_nll(logits, part["labels"])
    return jnp.sum(nll_B), jnp.sum(n_B)
