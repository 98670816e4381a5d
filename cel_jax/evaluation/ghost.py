"""Per-row gradient norms of every parameter tensor without weight gradients ("ghost norms").

Axes: B rows, T positions (rows of a tap's input), I tap input width, O tap output width, D model, V vocab.

For a parameter used as y = x W (x [T, I], y [T, O]) the gradient of one row's loss is G = x^T dy, and

    ||G||_F^2 = sum_{t,s} (x_t . x_s)(dy_t . dy_s)

so it needs the layer's input and output gradient, not G: one backward pass to the activations (with the
rows of a batch independent) gives every row's norms. The model marks x and y at each parameter use
(`model.taps.tap`); `taps.trace` finds them in the traced forward and re-runs it recording x and adding a
perturbation to y. The norms are then computed per kind of use:
* dense  (q, k, v, o, gate, up, down; + bias: sum_t dy_t):   Gram form when T (I + O) < I O, else G itself
* scale  (RMSNorm, y = scale * x_hat):                         sum_t dy_t * x_hat_t
* embed + head (tied [V, D] matrix, gathered rows + logits):   ||E||^2 + ||H||^2 + 2 <E, H> with
      E = scatter of dx at the ids:  ||E||^2 = sum_{t,s: id_t = id_s} dx_t . dx_s
      H = dlogits^T h:               ||H||^2 by the Gram form
      <E, H> = sum_{t,c} dlogits[c, id_t] (h_c . dx_t)
  (untied: ||E|| and ||H|| are two tensors)
Exact up to float rounding; the test compares it with the plain per-row gradient (tests/test_ghost.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cel_jax.model import taps

F32 = jnp.float32


def _flat(a):
    """[B, T, ...] -> float32 [B, T, prod(...)]."""
    return a.reshape(*a.shape[:2], -1).astype(F32)


def dense_sq(x_BTI, dy_BTO):
    """||x_b^T dy_b||_F^2 per row b."""
    _, T, I = x_BTI.shape
    O = dy_BTO.shape[-1]
    if T * (I + O) < I * O:
        gx_BTT = jnp.einsum("bti,bsi->bts", x_BTI, x_BTI)
        gy_BTT = jnp.einsum("bto,bso->bts", dy_BTO, dy_BTO)
        return jnp.sum(gx_BTT * gy_BTT, axis=(1, 2))
    g_BIO = jnp.einsum("bti,bto->bio", x_BTI, dy_BTO)
    return jnp.sum(g_BIO * g_BIO, axis=(1, 2))


def _embed_terms(ids_BT, dx_BTD, h_BCD, dl_BCV):
    """(||E||^2, <E, H>) per row for the embedding matrix used by the gather (ids, dx) and the head."""
    same_BTT = ids_BT[:, :, None] == ids_BT[:, None, :]
    e_sq = jnp.sum(jnp.where(same_BTT, jnp.einsum("btd,bsd->bts", dx_BTD, dx_BTD), 0.0), axis=(1, 2))
    if h_BCD is None:
        return e_sq, jnp.zeros_like(e_sq)
    C = h_BCD.shape[1]
    ids_BCT = jnp.broadcast_to(ids_BT[:, None, :], (ids_BT.shape[0], C, ids_BT.shape[1]))
    dl_at_ids_BCT = jnp.take_along_axis(dl_BCV, ids_BCT, axis=2)
    cross = jnp.sum(dl_at_ids_BCT * jnp.einsum("bcd,btd->bct", h_BCD, dx_BTD), axis=(1, 2))
    return e_sq, cross


def tensor_sq_norms(loss_B_fn: Callable[[], jax.Array], tied: bool) -> jax.Array:
    """[n_tensors, B] squared gradient norms of every parameter tensor, per row of `loss_B_fn()` (per-row
    losses [B] of a model forward that only depends on that row). Call inside jit."""
    probe = taps.trace(loss_B_fn)  # abstract: the tap sites' kinds and output shapes
    zeros = [jnp.zeros(s.shape, s.dtype) for s in probe.shapes]

    def total(perts):
        loss_B, inputs = probe.run(perts)
        return jnp.sum(loss_B), inputs

    dys, xs = jax.grad(total, has_aux=True)(zeros)
    sq: list[jax.Array] = []
    embed = head = None
    for kind, b, x, dy in zip(probe.kinds, probe.bias, xs, dys, strict=True):
        if kind == "embed":
            embed = (x, dy.astype(F32))
        elif kind == "head":
            head = (x.astype(F32), dy.astype(F32))
            if not tied:
                sq.append(dense_sq(*head))
        elif kind == "scale":
            sq.append(jnp.sum(jnp.sum(_flat(dy) * _flat(x), axis=1) ** 2, axis=-1))
        else:
            dy_BTO = _flat(dy)
            sq.append(dense_sq(_flat(x), dy_BTO))
            if b:
                sq.append(jnp.sum(jnp.sum(dy_BTO, axis=1) ** 2, axis=-1))
    if embed is None or (tied and head is None):
        raise ValueError("ghost norms need the embedding (and, when tied, the LM head) in the forward")
    e_sq, cross = _embed_terms(embed[0], embed[1], *(head if tied else (None, None)))
    sq.append(e_sq + dense_sq(*head) + 2.0 * cross if tied else e_sq)
    return jnp.stack(sq)
