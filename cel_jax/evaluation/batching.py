"""Host-side batching shared by the forward passes, GradNorm and generation: length buckets, even batch
sizes, attention masks (plain or the reference's `ids != pad`), progress bars and answer-row selection.

Axes: B rows, T padded row length, C rows kept per sequence (answer-predicting rows).
"""

from __future__ import annotations

import math
import sys

import numpy as np
from tqdm.auto import tqdm

from cel_jax.data.format import IGNORE
from cel_jax.unlearning import answer_rows


def round_up(n: int, multiple: int) -> int:
    """The bucket of a length: the next multiple of `multiple` (at least one multiple)."""
    return max(multiple, -(-int(n) // multiple) * multiple)


def even_batch(n: int, batch_size: int) -> int:
    """The batch size that cuts n rows into the fewest batches of at most batch_size with the fewest
    filler rows (the calls are as many as with batch_size; the last one is not mostly filler)."""
    return math.ceil(n / math.ceil(n / batch_size)) if n else batch_size


def key_mask(ids: np.ndarray, pad_id: int, compat: bool) -> np.ndarray:
    """Mask of the real tokens `ids`: all ones, or with `compat` the reference's `ids != pad_id`."""
    ids = np.asarray(ids)
    return (ids != pad_id).astype(np.int32) if compat else np.ones(ids.shape, np.int32)


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=True)


def answer_logits(model, ids_BT, mask_BT, labels_BT, cap: int | None):
    """(logits, labels) on every row (cap None), or on the answer-predicting rows only with compact labels
    (unlearning.answer_rows; same statistics: every one reads only rows whose next label is a target)."""
    if cap is None:
        return model(ids_BT, mask_BT), labels_BT
    rows_BC, labels_BC = answer_rows.compact(labels_BT, cap)
    return answer_rows.logits_on_rows(model, ids_BT, mask_BT, rows_BC), labels_BC


def answer_cap(labels_BT: np.ndarray, T: int) -> int | None:
    """Rows kept per sequence (a multiple of T/4, few compiled shapes), or None when it saves nothing or a
    label sits at position 0 (it is counted by n_tokens but predicted by no row)."""
    labels_BT = np.asarray(labels_BT)
    if T < 8 or np.any(labels_BT[:, 0] != IGNORE):
        return None
    cap = -(-answer_rows.capacity(labels_BT, multiple=1) // (T // 4)) * (T // 4)
    return cap if cap < T - 1 else None
