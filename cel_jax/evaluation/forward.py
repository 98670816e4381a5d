"""Device work of the evaluation: jitted, batched, length-bucketed forward statistics, per-sample GradNorm
and greedy generation for ROUGE. The metric formulas live in `metrics`; this file only feeds them.

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
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from cel_jax.evaluation import generate as gen
from cel_jax.evaluation import ghost as ghost_lib
from cel_jax.evaluation import metrics as M
from cel_jax.model.llama import init_cache
from cel_jax.scale import hostmem
from cel_jax.unlearning import answer_rows

IGNORE = M.IGNORE_INDEX
Item = Mapping[str, Any]
RowStats = dict[str, Any]  # avg_loss (float | None), n_tokens; with full stats also per-token arrays

_LOSS_KEYS = ("avg_loss_B", "valid_B", "n_tokens_B")
_FULL_KEYS = _LOSS_KEYS + ("mia_mask_BS", "token_logp_BS", "mu_BS", "sigma2_BS", "correct_BS")


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


def clock() -> tuple[float, float]:
    """Start of a timed section: (wall, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> dict[str, float]:
    """Wall and process-CPU seconds (all threads of this process) since `clock()`; CPU time is the
    measure that does not depend on how busy a shared machine is."""
    return {
        "wall_s": round(time.perf_counter() - start[0], 2),
        "cpu_s": round(time.process_time() - start[1], 2),
    }


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=True)


def _select(stats: Mapping[str, jax.Array], full: bool) -> dict[str, jax.Array]:
    return {k: stats[k] for k in (_FULL_KEYS if full else _LOSS_KEYS)}


# ----------------------------------------------------------------------------------------------------------
# Jitted kernels (one compile per shape; the model is an argument, so every model of one graph reuses them).


def _answer_logits(model, ids_BT, mask_BT, labels_BT, cap: int | None):
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


@functools.partial(jax.jit, static_argnames=("full", "cap"))
def _plain_stats(model, ids_BT, mask_BT, labels_BT, full: bool, cap: int | None = None):
    logits, labels = _answer_logits(model, ids_BT, mask_BT, labels_BT, cap)
    return _select(M.token_stats(logits, labels), full)


@functools.partial(jax.jit, static_argnames=("n_full",))
def _prefix_stats(
    model, pre_ids_GP, pre_mask_GP, pre_pos_GP, ids_GJA, mask_GJA, pos_GJA, labels_GJA, n_full: int
):
    """Prefill the shared prefixes once, then score the J answer chunks of every group against the cache."""
    G, J, A = ids_GJA.shape
    P = pre_ids_GP.shape[1]
    cache = init_cache(model.cfg, G, P + A)
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


@functools.partial(jax.jit, static_argnames=("cap",))
def _gradnorm(model, ids_1T, mask_1T, labels_1T, cap: int | None = None):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p):
        m = nnx.merge(graphdef, p, rest)
        return M.mia_token_nll(*_answer_logits(m, ids_1T, mask_1T, labels_1T, cap))[0]

    return M.grad_norm_mean(jax.grad(loss_fn)(params), 2)


@functools.partial(jax.jit, static_argnames=("cap",))
def _gradnorm_ghost(model, ids_BT, mask_BT, labels_BT, cap: int | None = None):
    """GradNorm scores [B] of B independent rows from one backward pass to the activations (ghost.py)."""
    sq_NB = ghost_lib.tensor_sq_norms(
        lambda: M.mia_token_nll(*_answer_logits(model, ids_BT, mask_BT, labels_BT, cap)),
        model.cfg.tie_word_embeddings,
    )
    return jnp.mean(jnp.sqrt(sq_NB), axis=0)


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
        with _progress(len(groups), desc, progress) as bar:
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
    with _progress(len(flat), desc, progress) as bar:
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
    with _progress(len(items), desc, progress) as bar:
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


# ----------------------------------------------------------------------------------------------------------
# Generation and text.


def clean_up_tokenization(text: str) -> str:
    """transformers 4.45's `clean_up_tokenization` (what OU's `clean_up_tokenization_spaces=True` did; the
    transformers 5 tokenizers here skip it for BPE)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
        text = text.replace(a, b)
    for a, b in ((" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def decode(tok, ids: Sequence[int], cleanup: bool = True) -> str:
    """`tok.decode(ids, skip_special_tokens=True)` with the 4.45 clean-up applied when `cleanup`."""
    text = tok.decode([int(t) for t in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return clean_up_tokenization(text) if cleanup else text


def target_ids(item: Item) -> list[int]:
    """The labelled tokens of an item (OU: `labels[labels != -100]`)."""
    return [int(t) for t in item["labels"] if t != IGNORE]


def generate_ids(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    batch_size: int = 128,
    compat: bool = False,
    shrink: bool | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> list[list[int]]:
    """Greedy continuations (EOS excluded). Prompts are sorted by length and cut into equal batches of at
    most `batch_size` (so the last batch carries few filler rows); with `shrink` (default: on the CPU)
    each batch drops its finished rows as it goes (`generate.decode_batch`). With `compat` the prompt
    mask is the reference's `ids != pad_id` (positions cumsum(mask) - 1). One progress step per batch,
    rows still generating shown as it runs."""
    if not prompts:
        return []
    order = np.argsort([len(p) for p in prompts], kind="stable")
    n_batches = math.ceil(len(prompts) / batch_size)
    B = even_batch(len(prompts), batch_size)
    mask_fn = (lambda p: key_mask(p, pad_id, True)) if compat else None
    results: list[list[int]] = [[] for _ in prompts]
    with _progress(n_batches, desc, progress) as bar:

        def on_segment(step: int, live: int) -> None:
            bar.set_postfix(step=step, generating=live)

        for start in range(0, len(order), B):
            idx = order[start : start + B]
            outs = gen.greedy_generate(
                model,
                [list(prompts[i]) for i in idx],
                eos_ids=eos_ids,
                pad_id=pad_id,
                max_new_tokens=max_new_tokens,
                batch_size=B,
                shrink=shrink,
                mask_fn=mask_fn,
                on_segment=on_segment,
            )
            for i, o in zip(idx, outs, strict=True):
                results[i] = list(o)
            bar.update(1)
    return results


def rouge_texts(tok, items: Sequence[Item], outputs: Sequence[Sequence[int]], stopwords: Sequence[str] = ()):
    """OU `eval_text_similarity` texts: (ground_truths, generations, inputs) for generation items
    (`input_ids` = prompt, `labels` = the labelled conversation / continuation)."""
    eos_text = tok.decode([tok.eos_token_id]) if tok.eos_token_id is not None else None
    gts, gens, inputs = [], [], []
    for it, out in zip(items, outputs, strict=True):
        input_text = decode(tok, it["input_ids"])
        gts.append(M.rouge_ground_truth(decode(tok, target_ids(it)), input_text))
        gens.append(M.clean_generation(decode(tok, out), stopwords, eos_text))
        inputs.append(input_text)
    return gts, gens, inputs
