"""Forward passes of the evaluation: jitted, batched, length-bucketed per-row statistics (losses and the
per-token MIA / memorisation arrays). The metric formulas live in `metrics`; this file only feeds them.
GradNorm is in `gradnorm`, generation in `batched_generation`, texts in `text`, timing in `timing`.

Axes: B rows (sequences), G groups (items) of J answers that share a question, T padded row length,
P padded shared-prefix length, A padded answer-chunk length, S next-token positions, V vocab.

Items are `cel_jax.data` dicts (`input_ids`, `labels` with IGNORE on the prompt). Every function here is
exact with respect to a plain full-sequence forward (`model(ids, mask)` with arange positions, right
padding), up to float rounding:
* Groups of J > 1 answers to one question (perturbed / paraphrased answers) run their shared prompt once:
  the prompt prefix is prefilled into a KV cache, then the J answer chunks attend to it (about 40% fewer
  tokens on TOFU). Positions and masks are those of the full sequence.
* `compat=True` builds every attention mask as the reference does, `input_ids != pad_id`: with pad == EOS
  this also hides real EOS tokens inside prompts and answers as keys (eager/sdpa semantics; under
  flash-attention-2 the reference additionally zeroes the attention output *at* masked query positions,
  which only changes logits read at a masked EOS, e.g. SmolLM2's "<|im_end|>\\n<|im_end|>" ending).
  Generation then uses positions cumsum(mask) - 1, as HF `generate`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cel_jax.data.format import IGNORE
from cel_jax.evaluation import metrics as M
from cel_jax.evaluation.batching import (
    answer_cap,
    answer_logits,
    even_batch,
    key_mask,
    progress_bar,
    round_up,
)
from cel_jax.model import families
from cel_jax.scale import hostmem

_answer_logits = answer_logits  # the pre-split private name (tests/test_ghost.py)

Item = Mapping[str, Any]
RowStats = dict[str, Any]  # avg_loss (float | None), n_tokens; with full stats also per-token arrays

_LOSS_KEYS = ("avg_loss_B", "valid_B", "n_tokens_B")
_FULL_KEYS = _LOSS_KEYS + ("mia_mask_BS", "token_logp_BS", "mu_BS", "sigma2_BS", "correct_BS")


def _select(stats: Mapping[str, jax.Array], full: bool) -> dict[str, jax.Array]:
    return {k: stats[k] for k in (_FULL_KEYS if full else _LOSS_KEYS)}


# ----------------------------------------------------------------------------------------------------------
# Jitted kernels (one compile per shape; the model is an argument, so every model of one graph reuses them).


@functools.partial(jax.jit, static_argnames=("full", "cap"))
def _plain_stats(model, ids_BT, mask_BT, labels_BT, full: bool, cap: int | None = None):
    logits, labels = answer_logits(model, ids_BT, mask_BT, labels_BT, cap)
    return _select(M.token_stats(logits, labels), full)


@functools.partial(jax.jit, static_argnames=("n_full",))
def _prefix_stats(
    model, pre_ids_GP, pre_mask_GP, pre_pos_GP, ids_GJA, mask_GJA, pos_GJA, labels_GJA, n_full: int
):
    """Prefill the shared prefixes once, then score the J answer chunks of every group against the cache."""
    G, J, A = ids_GJA.shape
    P = pre_ids_GP.shape[1]
    cache = families.init_cache(model.cfg, G, P + A)
    pre_kv_GP = pre_mask_GP.astype(bool)
    kv_GS = jnp.concatenate([pre_kv_GP, jnp.zeros((G, A), bool)], axis=1)
    _, cache = model.decode_step(pre_ids_GP, pre_pos_GP, kv_GS, cache, 0)
    cache = [{k: jnp.repeat(v, J, axis=0) for k, v in layer.items()} for layer in cache]
    kv_BS = jnp.concatenate(
        [jnp.repeat(pre_kv_GP, J, axis=0), mask_GJA.reshape(G * J, A).astype(bool)], axis=1
    )
    logits_BAV, _ = model.decode_step(ids_GJA.reshape(G * J, A), pos_GJA.reshape(G * J, A), kv_BS, cache, P)
    labels_BA = labels_GJA.reshape(G * J, A)
    out = {"loss": _select(M.token_stats(logits_BAV, labels_BA), False)}
    if n_full:
        logits_GJAV = logits_BAV.reshape(G, J, A, -1)[:, :n_full]
        first_BAV = logits_GJAV.reshape(G * n_full, A, -1)
        out["full"] = _select(M.token_stats(first_BAV, labels_GJA[:, :n_full].reshape(G * n_full, A)), True)
    return out


# ----------------------------------------------------------------------------------------------------------
# Host helpers.


def _row_stats(stats: Mapping[str, Any], n_rows: int) -> list[RowStats]:
    """Per-row host dicts from a batch's stats (first n_rows rows; the rest are fillers)."""
    host = {k: np.asarray(v) for k, v in jax.device_get(dict(stats)).items()}
    rows = []
    for b in range(n_rows):
        r: RowStats = {
            "avg_loss": float(host["avg_loss_B"][b]) if host["valid_B"][b] else None,
            "n_tokens": int(host["n_tokens_B"][b]),
        }
        if "mia_mask_BS" in host:
            m = host["mia_mask_BS"][b].astype(bool)
            for key, name in (("token_logp_BS", "token_logp"), ("mu_BS", "mu"), ("sigma2_BS", "sigma2")):
                r[name] = host[key][b][m].astype(np.float32)
            r["correct"] = host["correct_BS"][b][m].astype(bool)
        rows.append(r)
    return rows


def _shared_split(items: Sequence[Item]) -> int:
    """Tokens the J items of a group can share: their common input prefix, stopping before the token
    that predicts the first label of any of them (so every labelled position stays in the chunk)."""
    first = []
    for it in items:
        lab = np.asarray(it["labels"])
        nz = np.flatnonzero(lab != IGNORE)
        first.append(int(nz[0]) if nz.size else len(lab))
    s = min(first) - 1
    ref = list(items[0]["input_ids"])
    for it in items[1:]:
        ids = list(it["input_ids"])
        n = 0
        while n < min(s, len(ids), len(ref)) and ids[n] == ref[n]:
            n += 1
        s = min(s, n)
    return s


def _plain_rows(
    model,
    items: Sequence[Item],
    pad_id: int,
    *,
    batch_size: int,
    multiple: int,
    compat: bool,
    full: bool,
    bar,
) -> list[RowStats]:
    """Row statistics with full-sequence forwards: rows sorted by length, right-padded to buckets."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    out: list[RowStats | None] = [None] * len(items)
    batch_size = even_batch(len(items), batch_size)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        T = round_up(max(len(items[i]["input_ids"]) for i in idx), multiple)
        ids = np.full((batch_size, T), pad_id, np.int32)
        mask = np.zeros((batch_size, T), np.int32)
        labels = np.full((batch_size, T), IGNORE, np.int32)
        for r in range(batch_size):
            it = items[idx[r] if r < len(idx) else idx[0]]  # filler rows: a copy with no labels
            n = len(it["input_ids"])
            ids[r, :n] = it["input_ids"]
            mask[r, :n] = key_mask(it["input_ids"], pad_id, compat)
            if r < len(idx):
                labels[r, :n] = it["labels"]
        cap = answer_cap(labels, T)
        stats = _plain_stats(
            model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels), full=full, cap=cap
        )
        for i, row in zip(idx, _row_stats(stats, len(idx)), strict=True):
            out[i] = row
        bar.update(len(idx))
    return out  # type: ignore[return-value]


def _prefix_groups(
    model,
    groups: Sequence[Sequence[Item]],
    splits: Sequence[int],
    pad_id: int,
    *,
    batch_size: int,
    multiple: int,
    compat: bool,
    n_full: int,
    bar,
) -> list[list[RowStats]]:
    """Row statistics of groups sharing a prompt prefix (prefill once, J chunks per group)."""
    J = len(groups[0])
    G = even_batch(len(groups), max(1, batch_size // J))
    P = round_up(max(splits), multiple)  # one prefix bucket per call: the prefix is 1/J of the work

    def chunk_len(g: int) -> int:
        return max(len(it["input_ids"]) for it in groups[g]) - splits[g]

    order = sorted(range(len(groups)), key=chunk_len)
    out: list[list[RowStats] | None] = [None] * len(groups)
    for start in range(0, len(order), G):
        idx = order[start : start + G]
        A = round_up(max(chunk_len(g) for g in idx), multiple)
        pre_ids = np.full((G, P), pad_id, np.int32)
        pre_mask = np.zeros((G, P), np.int32)
        pre_pos = np.zeros((G, P), np.int32)
        ids = np.full((G, J, A), pad_id, np.int32)
        mask = np.zeros((G, J, A), np.int32)
        pos = np.zeros((G, J, A), np.int32)
        labels = np.full((G, J, A), IGNORE, np.int32)
        for r in range(G):
            g = idx[r] if r < len(idx) else idx[0]  # filler groups: copies with no labels
            s = splits[g]
            prefix = np.asarray(groups[g][0]["input_ids"][:s])
            pre_ids[r, P - s :] = prefix
            pre_mask[r, P - s :] = key_mask(prefix, pad_id, compat)
            pre_pos[r, P - s :] = np.arange(s)
            for j, it in enumerate(groups[g]):
                chunk = np.asarray(it["input_ids"][s:])
                n = len(chunk)
                ids[r, j, :n] = chunk
                mask[r, j, :n] = key_mask(chunk, pad_id, compat)
                pos[r, j] = s + np.arange(A)
                if r < len(idx):
                    labels[r, j, :n] = it["labels"][s:]
        res = _prefix_stats(
            model,
            *(jnp.asarray(a) for a in (pre_ids, pre_mask, pre_pos, ids, mask, pos, labels)),
            n_full=n_full,
        )
        loss_rows = _row_stats(res["loss"], len(idx) * J)
        full_rows = _row_stats(res["full"], len(idx) * n_full) if n_full else []
        for r, g in enumerate(idx):
            rows = loss_rows[r * J : (r + 1) * J]
            for j in range(n_full):
                rows[j] = full_rows[r * n_full + j]
            out[g] = rows
        bar.update(len(idx))
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# Public API.


def group_stats(
    model,
    groups: Sequence[Sequence[Item]],
    pad_id: int,
    *,
    batch_size: int = 32,
    multiple: int = 16,
    compat: bool = False,
    n_full: int = 0,
    share_prefix: bool = True,
    desc: str = "forward",
    progress: bool = True,
) -> list[list[RowStats]]:
    """Per group, per answer: `{"avg_loss", "n_tokens"}`, plus the MIA / memorisation per-token arrays
    (`token_logp`, `mu`, `sigma2`, `correct` at OU's positions: labelled minus the last) for the first
    `n_full` answers of each group. All groups must have the same number of answers J.

    `batch_size` is in rows (sequences); lengths are padded to multiples of `multiple`.
    """
    if not groups:
        return []
    J = len(groups[0])
    if any(len(g) != J for g in groups):
        raise ValueError(
            f"all groups need the same number of answers; got {sorted({len(g) for g in groups})}"
        )
    if not 0 <= n_full <= J:
        raise ValueError(f"n_full must be in [0, {J}], got {n_full}")
    if batch_size < 1 or multiple < 1:
        raise ValueError(f"batch_size and multiple must be positive; got {batch_size}, {multiple}")
    splits = [_shared_split(g) for g in groups] if (share_prefix and J > 1) else []
    if splits and min(splits) >= 1:
        with progress_bar(len(groups), desc, progress) as bar:
            shared = _prefix_groups(
                model,
                groups,
                splits,
                pad_id,
                batch_size=batch_size,
                multiple=multiple,
                compat=compat,
                n_full=n_full,
                bar=bar,
            )
        hostmem.release()  # the set's logits pages go back to the OS (glibc keeps them otherwise)
        return shared
    # Plain full-sequence rows (single answers, or prompts that cannot be shared); progress in rows.
    flat = [it for g in groups for it in g]
    rows: list[RowStats | None] = [None] * len(flat)
    with progress_bar(len(flat), desc, progress) as bar:
        for want_full in (True, False):
            sel = [i for i in range(len(flat)) if (i % J < n_full) == want_full]
            if not sel:
                continue
            sub = _plain_rows(
                model,
                [flat[i] for i in sel],
                pad_id,
                batch_size=batch_size,
                multiple=multiple,
                compat=compat,
                full=want_full,
                bar=bar,
            )
            for i, r in zip(sel, sub, strict=True):
                rows[i] = r
    hostmem.release()  # the set's logits pages go back to the OS (glibc keeps them otherwise)
    return [rows[g * J : (g + 1) * J] for g in range(len(groups))]  # type: ignore[misc]


def item_stats(model, items: Sequence[Item], pad_id: int, *, full: bool = False, **kw: Any) -> list[RowStats]:
    """group_stats for single-answer items (full=True: with the per-token MIA arrays)."""
    return [g[0] for g in group_stats(model, [[it] for it in items], pad_id, n_full=int(full), **kw)]
