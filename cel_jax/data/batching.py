"""Padding, length buckets, forget/retain pairing, a resumable data cursor and host slicing.

Numpy only; the engine turns these host arrays into sharded global arrays.
Axes: B batch (global unless host-sliced), T padded length (always a bucket length).

Last batch of an epoch: padded, not dropped. The missing slots are copies of the batch's first real
item with weight 0 and all labels IGNORE, so every row attends to real tokens (no all-masked rows)
and token-mean losses skip them by themselves; per-sequence losses must multiply by `weight_B`.
Steps per epoch are therefore ceil(n / B), as HF Trainer's default (drop_last=False).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from cel_jax.data.format import IGNORE


class Cursor(NamedTuple):
    """Where the data stream stands: epoch and items of that epoch's order already consumed."""

    epoch: int = 0
    position: int = 0


# ---------------------------------------------------------------------------------------------------
# Buckets and padding


def make_buckets(max_length: int, *, multiple: int | None = None, min_length: int = 32) -> tuple[int, ...]:
    """Bucket lengths up to max_length: powers of two >= min_length, or multiples of `multiple`;
    max_length itself is always the last bucket."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if multiple is not None:
        if multiple < 1:
            raise ValueError(f"multiple must be positive, got {multiple}")
        sizes = list(range(multiple, max_length, multiple))
    else:
        sizes, b = [], max(1, min_length)
        while b < max_length:
            sizes.append(b)
            b *= 2
    return tuple(sizes) + (max_length,)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; ValueError when none is long enough."""
    fitting = [b for b in buckets if b >= length]
    if not fitting:
        raise ValueError(
            f"a sequence of {length} tokens is longer than the largest bucket {max(buckets)}; raise "
            "max_length (reference truncation appends EOS after truncating: allow max_length + 1)"
        )
    return min(fitting)


def pad_items(
    items: Sequence[Mapping[str, Any]],
    pad_id: int,
    *,
    length: int,
    side: str = "right",
    keys: Sequence[str] = ("input_ids", "labels"),
) -> dict[str, np.ndarray]:
    """Pads items to `length`: input_ids with pad_id, labels with IGNORE, on the right (training,
    probabilities) or left (generation). attention_mask comes from true lengths (int32)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not items:
        raise ValueError("cannot pad an empty list of items")
    fill = {"input_ids": pad_id, "labels": IGNORE}
    out = {k: np.full((len(items), length), fill.get(k, 0), np.int32) for k in keys}
    mask_BT = np.zeros((len(items), length), np.int32)
    for b, item in enumerate(items):
        n = len(item["input_ids"])
        if n > length:
            raise ValueError(f"item {b} has {n} tokens, more than the padded length {length}")
        sl = slice(0, n) if side == "right" else slice(length - n, length)
        for k in keys:
            if len(item[k]) != n:
                raise ValueError(f"item {b}: {k!r} has {len(item[k])} entries but input_ids has {n}")
            out[k][b, sl] = item[k]
        mask_BT[b, sl] = 1
    out["attention_mask"] = mask_BT
    return out


def collate(
    items: Sequence[Mapping[str, Any]],
    pad_id: int,
    buckets: Sequence[int],
    *,
    side: str = "right",
    weight: np.ndarray | None = None,
    keys: Sequence[str] = ("input_ids", "labels"),
    length: int | None = None,
    compat_mask: bool = False,
) -> dict[str, np.ndarray]:
    """pad_items to the bucket of the longest item (or `length`); adds `weight` (float32, B) and
    sets labels of zero-weight rows to IGNORE. `compat_mask` swaps in the reference's
    `input_ids != pad_id` attention mask (see compat_attention_mask)."""
    if length is None:
        length = pick_bucket(max(len(it["input_ids"]) for it in items), buckets)
    batch = pad_items(items, pad_id, length=length, side=side, keys=keys)
    w_B = np.ones(len(items), np.float32) if weight is None else np.asarray(weight, np.float32)
    if w_B.shape != (len(items),):
        raise ValueError(f"weight has shape {w_B.shape}, expected ({len(items)},)")
    if "labels" in batch:
        batch["labels"][w_B == 0] = IGNORE
    batch["weight"] = w_B
    if compat_mask:
        batch["attention_mask"] = compat_attention_mask(batch["input_ids"], pad_id)
    return batch


def compat_attention_mask(input_ids_BT: np.ndarray, pad_id: int) -> np.ndarray:
    """The reference's mask `input_ids != pad_id`: with pad == EOS it also hides real EOS tokens."""
    return (np.asarray(input_ids_BT) != pad_id).astype(np.int32)


# ---------------------------------------------------------------------------------------------------
# Epoch order, retain partners, cursor


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), stream]))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of items 0..n-1 in an epoch: a seeded permutation per (seed, epoch), or arange."""
    return _rng(seed, epoch, 0).permutation(n) if shuffle else np.arange(n)


def retain_partners(n_forget: int, n_retain: int, seed: int, epoch: int) -> np.ndarray:
    """partner[i] = the retain item paired with forget item i in this epoch: uniform with replacement
    (as the reference's randint per access), a pure function of (seed, epoch, i)."""
    if n_retain < 1:
        raise ValueError("the retain set is empty")
    return _rng(seed, epoch, 1).integers(0, n_retain, size=n_forget)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def next_indices(
    n: int, batch_size: int, seed: int, cursor: Cursor, shuffle: bool = True
) -> tuple[np.ndarray, np.ndarray, Cursor]:
    """The next batch's item indices (B,), weights (B,) and the cursor after it."""
    if n < 1:
        raise ValueError("the data set is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    epoch, pos = cursor
    if pos >= n:
        epoch, pos = epoch + 1, 0
    idx = epoch_order(n, seed, epoch, shuffle)[pos : pos + batch_size]
    weight_B = np.ones(batch_size, np.float32)
    if len(idx) < batch_size:
        weight_B[len(idx) :] = 0.0
        idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    pos += batch_size
    nxt = Cursor(epoch + 1, 0) if pos >= n else Cursor(epoch, pos)
    return idx, weight_B, nxt


def sequential_batches(n: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One pass in order (evaluation): [(idx_B, weight_B)], the last batch padded with weight 0."""
    out, cursor = [], Cursor()
    for _ in range(steps_per_epoch(n, batch_size)):
        idx, w, cursor = next_indices(n, batch_size, 0, cursor, shuffle=False)
        out.append((idx, w))
    return out


def next_pairs(
    n_forget: int, n_retain: int, batch_size: int, seed: int, cursor: Cursor, shuffle: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Cursor]:
    """Forget-anchored pairs: (forget_idx_B, retain_idx_B, weight_B, cursor_after)."""
    epoch = cursor.epoch + 1 if cursor.position >= n_forget else cursor.epoch
    f_idx, w, nxt = next_indices(n_forget, batch_size, seed, cursor, shuffle)
    r_idx = retain_partners(n_forget, n_retain, seed, epoch)[f_idx]
    return f_idx, r_idx, w, nxt


# ---------------------------------------------------------------------------------------------------
# Multi-host
