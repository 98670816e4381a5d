"""Train state, the Lagrangian objective and the jitted primal–dual step (pure functions).

Axes: M micro-batches per optimizer step, B micro-batch size, T length, V vocab, D model.
One optimizer step = a `lax.scan` over M micro-batches accumulating gradients, then one optax update.
The primal gradient uses the multiplier from before the update; the dual rule (unlearning/dual.py) runs
inside the same jitted step (`dual.advance` after each micro-batch and at the step's end: the "step" and
"microbatch" modes); the loop advances it at an epoch's end ("epoch"), "fixed" never moves it.
`batch["valid_M"]` marks filler micro-batches (0): the last step of an epoch may have fewer real
micro-batches than M, and fillers add nothing to gradients, metrics or λ.
The warm-start flag is a traced value and the rule is static: changing λ never recompiles.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from cel_jax.unlearning import answer_rows, losses, methods
from cel_jax.unlearning import dual as dual_lib

TRACE_COUNT: collections.Counter = collections.Counter()  # compilations per step kind (tests count them)


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 optimizer steps done
    params: Any  # pure dict of arrays (nnx.to_pure_dict of the model's Params)
    opt_state: Any
    dual: dual_lib.DualState  # λ and the dual rule's state (replicated)
    eps: jax.Array  # float32 ε (replicated)
    forget_scale: jax.Array  # float32 weight w of L_f in the Lagrangian: 1 or 1 / L_f(θ₀)
    rng: jax.Array  # uint32[2] key data


@struct.dataclass
class StepSpec:
    """Static description of the objective (part of the compiled program)."""

    resolved: methods.Method = struct.field(pytree_node=False)  # the run's method record (methods.resolve)
    dual_mode: str = struct.field(pytree_node=False, default="fixed")  # step | microbatch | epoch | fixed
    dual_rule: dual_lib.Rule = struct.field(pytree_node=False, default=dual_lib.Rule())
    # ((part, capacity), ...): parts whose LM head runs on answer-predicting rows only (answer_rows.py)
    answer_rows: tuple = struct.field(pytree_node=False, default=())

    @property
    def method(self) -> str:
        return self.resolved.name

    @property
    def solver(self) -> str:  # primal_dual | scalarized | finetune
        return self.resolved.solver

    @property
    def alpha(self) -> float:
        return self.resolved.alpha


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


def reference_quantities(graphdef, ref_params, mb, spec: StepSpec) -> dict:
    """Frozen reference outputs for one micro-batch: one forward per batch part at most, no gradient."""
    need = spec.resolved.reference
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
        layer = spec.resolved.hidden_layer if "ref_retain_hidden" in need else None
        logits, hidden = _forward(ref, mb["retain"], layer)
        if "ref_retain_logits" in need:
            out["ref_retain_logits"] = logits
        if "ref_retain_hidden" in need:
            out["ref_retain_hidden"] = hidden
    return jax.lax.stop_gradient(out)


def objective(params, lam, eps, mb, ref, consts, graphdef, spec: StepSpec, forget_scale=1.0):
    """(scalar objective, (forget_loss, retain_loss)) for one micro-batch."""
    model = nnx.merge(graphdef, params)
    if spec.solver == "finetune":
        logits, _ = _forward(model, mb["forget"], None)
        loss = losses.token_ce_mean(logits, mb["forget"]["labels"])
        return loss, (loss, jnp.float32(jnp.nan))
    m = spec.resolved
    q = dict(ref)
    q.update(consts)
    f_logits, f_hidden = _forward(model, mb["forget"], m.hidden_layer)
    q.update(forget_logits=f_logits, forget_labels=mb["forget"]["labels"])
    if f_hidden is not None:
        q["forget_hidden"] = f_hidden
    if "idk" in mb:
        q.update(idk_logits=_forward(model, mb["idk"], None)[0], idk_labels=mb["idk"]["labels"])
    l_f, _ = m.forget_loss(q)
    if m.retain_kind is None:
        l_r = jnp.float32(0.0)
    else:
        r_logits, r_hidden = _forward(
            model, mb["retain"], m.hidden_layer if m.retain_kind == "embed_diff" else None
        )
        q.update(retain_logits=r_logits, retain_labels=mb["retain"]["labels"])
        if r_hidden is not None:
            q["retain_hidden"] = r_hidden
        l_r = methods.retain_loss(m.retain_kind, q, compat=m.compat)
    if spec.solver == "primal_dual":
        w = m.gamma * resolve_forget_scale(forget_scale, l_f)
        obj = dual_lib.lagrangian(spec.dual_rule, l_f, l_r, lam, eps, w)
    else:
        obj = methods.scalarised(l_f, l_r, m.gamma, m.alpha)
    return obj, (l_f.astype(jnp.float32), l_r.astype(jnp.float32))


def resolve_forget_scale(forget_scale, forget_loss) -> jax.Array:
    """The weight w of L_f: `forget_scale` once set (> 0); 0 means "normalise by this loss", w = 1/|L_f|
    of the run's first micro-batch (no gradient through w), so the forget term starts at 1."""
    fs = jnp.asarray(forget_scale, jnp.float32)
    first = 1.0 / jnp.maximum(jnp.abs(jax.lax.stop_gradient(forget_loss.astype(jnp.float32))), 1e-6)
    return jnp.where(fs > 0, fs, first)


def train_step(state: TrainState, batch, hp, ref_params, consts, *, graphdef, tx, spec: StepSpec):
    """One optimizer step over M stacked micro-batches. hp: traced {dual_active}.

    batch: {part: {input_ids, attention_mask, labels: [M, B, T]}, "valid_M": [M] (optional)}."""
    TRACE_COUNT[spec.solver] += 1
    parts = {k: v for k, v in batch.items() if k != "valid_M"}
    n_micro = jax.tree.leaves(parts)[0].shape[0]
    valid_M = batch.get("valid_M", jnp.ones((n_micro,), jnp.float32)).astype(jnp.float32)
    n_valid = jnp.maximum(jnp.sum(valid_M), 1.0)

    def weighted(params, w, *args):
        # the micro-batch's share w = valid / n_valid enters as the backward pass's seed, so the summed
        # gradients are already the mean: no separate pass (and parameter-sized copy) dividing them
        obj, aux = objective(params, *args)
        return w * obj, (obj, aux)

    grad_fn = jax.value_and_grad(weighted, has_aux=True)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    mode = spec.dual_mode if spec.solver == "primal_dual" else "fixed"  # λ moves under primal_dual only
    advance = functools.partial(dual_lib.advance, spec.dual_rule, mode)

    def micro(carry, xs):
        g_acc, dual, fs = carry
        mb, valid = xs
        mb = answer_rows.compact_batch(mb, spec.answer_rows)
        ref = reference_quantities(graphdef, ref_params, mb, spec) if ref_params is not None else {}
        w = valid / n_valid
        (_, (obj, (l_f, l_r))), g = grad_fn(
            state.params, w, dual.lam, state.eps, mb, ref, consts, graphdef, spec, fs
        )
        lam_used = dual.lam
        dual = advance("microbatch", dual, l_r, state.eps, hp["dual_active"] & (valid > 0))
        g_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_acc, g)
        return (g_acc, dual, resolve_forget_scale(fs, l_f)), (obj, l_f, l_r, lam_used)

    carry0 = (zeros, state.dual, state.forget_scale)
    (grads, dual_end, fs), (objs, l_fs, l_rs, lams) = jax.lax.scan(micro, carry0, (parts, valid_M))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    mean = lambda x_M: jnp.sum(jnp.where(valid_M > 0, x_M, 0.0)) / n_valid
    l_r = mean(l_rs)
    v = dual_lib.violation(spec.dual_rule, l_r, state.eps)
    dual_next = advance("step", dual_end, l_r, state.eps, hp["dual_active"])  # after "microbatch" ones
    if spec.solver != "primal_dual":
        fs = state.forget_scale
    new = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, dual=dual_next, forget_scale=fs
    )
    metrics = {
        "loss": mean(objs),
        "forget_loss": mean(l_fs),
        "retain_loss": l_r,
        "retain_loss_micro": l_rs,
        "dual_micro": lams,
        "dual": state.dual.lam,
        "dual_next": dual_next.lam,
        "dual_eff": dual_lib.effective_multiplier(spec.dual_rule, state.dual.lam, v),
        "grad_norm": optax.tree.norm(grads),
        "valid_micro": valid_M,
        "forget_scale": fs,
    }
    return new, metrics


def retain_nll_sums(params, part, graphdef):
    """(sum of answer-token NLL, number of answer tokens) of a batch: for ε = (1+α)·L_r(π_ref) and the
    epoch-mode dual update (token-weighted means over many batches)."""
    model = nnx.merge(graphdef, params)
    logits = model(part["input_ids"], part["attention_mask"])
    nll_B, n_B = losses.sequence_nll(logits, part["labels"])
    return jnp.sum(nll_B), jnp.sum(n_B)
