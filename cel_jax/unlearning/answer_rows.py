"""LM head on answer rows only: gather the rows a loss reads before the [D, V] unembedding.

Axes: B batch, T length, t = T-1 shifted rows, C capacity (rows kept per sequence), D model, V vocab.

In the default (non-compat) mode every logits-based loss reads only the rows that predict an answer
token: logits[:, t] with labels[:, t+1] != IGNORE. With TOFU's chat template those are about a third
of the rows, and the LM head (D x V = 576 x 49152 for SmolLM2) is a fifth of the model's FLOPs, so
computing it (and softmax, losses and their backward) on the other rows is wasted work.

`compact(labels_BT, C)` picks, per sequence and in order, the first C answer-predicting rows and
builds labels of the same "unshifted" convention the losses already use:

  rows_BC[b, j]      = index t of the j-th answer-predicting row of sequence b (padding slots: any
                       non-answer row)
  labels_BC[b, 0]    = IGNORE;  labels_BC[b, j+1] = labels[b, rows_BC[b, j] + 1]  (IGNORE past the count)

so that logits_BCV = unembed(hidden_BTD[b, rows_BC[b, j]]) with labels_BC forms exactly the
(logit row, target) pairs of the full [B, T, V] computation, in the same order: every per-token,
per-sequence and token-mean loss is unchanged. It needs count_b <= C - 1 for every sequence; `plan`
picks C from the whole dataset once (one static shape, no recompiles) and the engine checks it.

Which parts qualify is declared by the losses themselves and resolved once per run into
`methods.Method.answer_row_parts`: not applied (full logits, as before) where a loss reads other rows:
compat mode (unshifted rows, "all rows" averages, the reference's KL over every position), `pdu` /
`pdu_entropy` with shifted=False or average="all", RMU's hidden-state terms. `lm_head_rows="all"` in
the config turns it off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from cel_jax.unlearning.losses import IGNORE

MULTIPLE = 8  # capacity rounded up to this (a few wasted rows, fewer distinct shapes)


def _counts(labels) -> np.ndarray:
    """Rows that predict an answer token (labels[..., t+1] != IGNORE), per sequence (last axis)."""
    return np.sum(np.asarray(labels)[..., 1:] != IGNORE, axis=-1)


def answer_count(labels: Sequence[int] | np.ndarray) -> int:
    """Number of rows of one sequence that predict an answer token."""
    return int(_counts(labels))


def capacity(label_lists: Iterable[Sequence[int]], multiple: int = MULTIPLE) -> int:
    """Smallest multiple of `multiple` that holds every sequence's answer rows plus one spare slot."""
    most = max((answer_count(lab) for lab in label_lists), default=0)
    return -(-(most + 1) // multiple) * multiple


def compact(labels_BT, C: int):
    """(rows_BC int32, labels_BC) as in the module docstring; needs every count <= C - 1."""
    valid_Bt = labels_BT[:, 1:] != IGNORE
    rows_BC = jnp.argsort(~valid_Bt, axis=-1, stable=True)[:, :C].astype(jnp.int32)
    count_B = jnp.sum(valid_Bt, axis=-1)
    tgt_BC = jnp.take_along_axis(labels_BT[:, 1:], rows_BC, axis=-1)
    tgt_BC = jnp.where(jnp.arange(C)[None, :] < count_B[:, None], tgt_BC, IGNORE)
    first_B1 = jnp.full((labels_BT.shape[0], 1), IGNORE, labels_BT.dtype)
    return rows_BC, jnp.concatenate([first_B1, tgt_BC[:, :-1]], axis=1)


def logits_on_rows(model, ids_BT, mask_BT, rows_BC):
    """logits_BCV = LM head (final norm + unembedding) on the gathered rows of one full forward."""
    x_BTD = model(ids_BT, mask_BT, unembed=False)
    return model.unembed(jnp.take_along_axis(x_BTD, rows_BC[..., None], axis=1))


def plan(
    parts: Iterable[str], labels_by_part: Mapping[str, Iterable[Sequence[int]]]
) -> tuple[tuple[str, int], ...]:
    """((part, capacity), ...) for the given parts, in sorted order, from every sequence's labels; parts
    without sequences are left out. One capacity per part for a whole run: one compiled shape."""
    out = []
    for p in sorted(parts):
        labels = list(labels_by_part.get(p, ()))
        if labels:
            out.append((p, capacity(labels)))
    return tuple(out)


def compact_batch(mb: Mapping[str, Mapping], capacities: Sequence[tuple[str, int]]) -> dict:
    """Replace `labels` of each named part by its compact labels and add `rows` (the gather indices).

    A part whose shifted length T-1 is not larger than its capacity is left as it is (no gain).
    """
    out = dict(mb)
    for part, C in capacities:
        if part not in mb:
            continue
        labels = mb[part]["labels"]
        if labels.shape[-1] - 1 <= C:
            continue
        rows, lab = compact(labels, C)
        out[part] = {**mb[part], "labels": lab, "rows": rows}
    return out


def check_capacity(labels_BT: np.ndarray, C: int, part: str) -> None:
    """Host-side guard: raise if any sequence has more answer rows than the compiled capacity holds."""
    most = int(np.max(_counts(labels_BT), initial=0))
    if most > C - 1:
        raise ValueError(
            f"answer-row capacity {C} of part {part!r} is too small for a sequence with {most} answer "
            f"tokens (needs {most + 1}); this is a bug in answer_rows.plan"
        )
