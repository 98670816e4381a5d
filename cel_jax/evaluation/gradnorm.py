"""OU's GradNorm MIA score per item: the mean over parameter tensors of the L2 norm of the item's own loss
gradient (the reference runs batch 1), optionally from ghost norms (ghost.py) for several items per call.

Axes: B rows, T padded row length, N parameter tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cel_jax.data.format import IGNORE
from cel_jax.evaluation import ghost as ghost_lib
from cel_jax.evaluation import metrics as M
from cel_jax.evaluation.batching import (
    answer_cap,
    answer_logits,
    even_batch,
    key_mask,
    progress_bar,
    round_up,
)
from cel_jax.scale import hostmem

Item = Mapping[str, Any]


@functools.partial(jax.jit, static_argnames=("cap",))
def _gradnorm(model, ids_1T, mask_1T, labels_1T, cap: int | None = None):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p):
        m = nnx.merge(graphdef, p, rest)
        return M.mia_token_nll(*answer_logits(m, ids_1T, mask_1T, labels_1T, cap))[0]

    return M.grad_norm_mean(jax.grad(loss_fn)(params), 2)


@functools.partial(jax.jit, static_argnames=("cap",))
def _gradnorm_ghost(model, ids_BT, mask_BT, labels_BT, cap: int | None = None):
    """GradNorm scores [B] of B independent rows from one backward pass to the activations (ghost.py)."""
    sq_NB = ghost_lib.tensor_sq_norms(
        lambda: M.mia_token_nll(*answer_logits(model, ids_BT, mask_BT, labels_BT, cap)),
        model.cfg.tie_word_embeddings,
    )
    return jnp.mean(jnp.sqrt(sq_NB), axis=0)


def gradnorm_scores(
    model,
    items: Sequence[Item],
    pad_id: int,
    *,
    multiple: int = 32,
    per_item: bool | None = None,
    ghost: int = 8,
    compat: bool = False,
    desc: str = "mia_gradnorm",
    progress: bool = True,
) -> list[float | None]:
    """OU GradNorm score per item: mean over parameter tensors of the L2 norm of
    d(-mean target log-prob over the MIA positions)/d(param), each item's own gradient (the reference runs
    batch 1). None for an item without MIA positions.

    `ghost=G > 0`: G items per call, every tensor's per-item norm from one backward pass to the activations
    without weight gradients (cel_jax/evaluation/ghost.py; exact up to float rounding, fewer FLOPs and
    larger matmuls). `ghost=0`, and any model with remat: the reference's way, one full gradient per item.

    `per_item=True`: each item is right-padded to its own length bucket (a multiple of `multiple`; padding
    is masked and changes no gradient), so the gradient compiles once per bucket and items run bucket by
    bucket. `per_item=False` pads every item to the longest one's bucket (one compile, more tokens).
    None: True on the CPU, where the time follows the tokens (x1.32 measured, bench/gradnorm_buckets.py);
    False elsewhere, where a 135M model's batch-1 step is bound by launches, not tokens, and the GPU
    results were measured that way."""
    if multiple < 1 or ghost < 0:
        raise ValueError(f"multiple must be positive and ghost >= 0, got {multiple}, {ghost}")
    if per_item is None:
        per_item = jax.default_backend() == "cpu"
    if model.cfg.remat != "none":
        ghost = 0  # the taps cannot see inside rematerialised layers: one full gradient per item
    out: list[float | None] = [None] * len(items)
    buckets: dict[int, list[int]] = {}
    longest = max((len(it["input_ids"]) for it in items), default=0)
    for i, it in enumerate(items):
        if int(np.sum(np.asarray(it["labels"]) != IGNORE)) >= 2:  # else nothing left once the last is dropped
            T = round_up(len(it["input_ids"]) if per_item else longest, multiple)
            buckets.setdefault(T, []).append(i)
    with progress_bar(len(items), desc, progress) as bar:
        bar.update(len(items) - sum(map(len, buckets.values())))
        for T, idx in sorted(buckets.items()):
            labels_NT = np.full((len(idx), T), IGNORE, np.int32)
            for r, i in enumerate(idx):
                labels_NT[r, : len(items[i]["labels"])] = items[i]["labels"]
            cap = answer_cap(labels_NT, T)
            G = even_batch(len(idx), ghost) if ghost else 1
            for start in range(0, len(idx), G):
                rows = list(range(start, min(start + G, len(idx))))
                src = rows + [rows[0]] * (G - len(rows))  # fillers: copies (rows are independent; dropped)
                ids = np.full((G, T), pad_id, np.int32)
                mask = np.zeros((G, T), np.int32)
                for g, r in enumerate(src):
                    it = items[idx[r]]
                    ids[g, : len(it["input_ids"])] = it["input_ids"]
                    mask[g, : len(it["input_ids"])] = key_mask(it["input_ids"], pad_id, compat)
                labels = labels_NT[src]
                args = (model, *map(jnp.asarray, (ids, mask, labels)))
                scores = (
                    np.asarray(_gradnorm_ghost(*args, cap=cap))
                    if ghost
                    else [float(_gradnorm(*args, cap=cap))]
                )
                for g, r in enumerate(rows):
                    out[idx[r]] = float(scores[g])
                bar.update(len(rows))
    hostmem.release()
    return out
