"""Jitted batched greedy decoding with a KV cache, left padding, EOS and stop strings.

Axes: B batch, P padded prompt length (a bucket), S cache slots (= P + max_new_tokens), V vocab.
Prompts are left-padded to a length bucket, so the jitted prefill/decode compiles once per
(B, P bucket, max_new_tokens), not once per prompt length. Positions follow HF `generate`:
cumsum(mask) - 1, so left padding does not shift RoPE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cel_jax.model import families
from cel_jax.scale import hostmem


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= n (at least `minimum`): few distinct compiled shapes."""
    b = minimum
    while b < n:
        b *= 2
    return b


# Batch sizes a decode shrinks to once enough rows have finished (see `decode_batch`).
SHRINK_SIZES = (64, 32, 16, 4, 1)


@functools.partial(jax.jit, static_argnames=("max_new_tokens",))
def _prefill(model: nnx.Module, ids_BP, mask_BP, max_new_tokens: int):
    """Prefill left-padded prompts into a cache of S = P + max_new_tokens slots; returns the decode state
    (next token, cache, kv mask, done flags, last prompt position)."""
    B, P = ids_BP.shape
    cache = families.init_cache(model.cfg, B, P + max_new_tokens)
    kv_mask_BS = jnp.concatenate([mask_BP.astype(bool), jnp.zeros((B, max_new_tokens), bool)], axis=1)
    pos_BP = jnp.maximum(jnp.cumsum(mask_BP, axis=1) - 1, 0)
    logits, cache = model.decode_step(ids_BP, pos_BP, kv_mask_BS, cache, 0, last_only=True)  # left-padded
    nxt_B = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    return nxt_B, cache, kv_mask_BS, jnp.zeros((B,), bool), pos_BP[:, -1]


# The decode state (its KV cache: 1.8 GB for 128 SmolLM2 rows of 300 slots) is donated, so a segment
# updates the cache in place instead of holding the old and the new one.
@functools.partial(jax.jit, static_argnames=("steps", "max_new_tokens"), donate_argnames=("state",))
def _decode(model: nnx.Module, state, eos_ids, start, steps: int, max_new_tokens: int):
    """Greedy steps start .. start+steps-1 (stopping early once every row is done or at max_new_tokens).
    Returns (state, out_BN: the tokens emitted, -1 where no step ran, next step index)."""
    tok_B, cache, kv_mask_BS, done_B, last_pos_B = state
    P = kv_mask_BS.shape[1] - max_new_tokens
    stop = jnp.minimum(start + steps, max_new_tokens)

    def cond(c):
        i, _, _, _, done_B, _ = c
        return (i < stop) & ~jnp.all(done_B)

    def body(c):
        i, tok_B, cache, kv_mask, done_B, out_BN = c
        tok_B = jnp.where(done_B, eos_ids[0], tok_B)
        out_BN = out_BN.at[:, i - start].set(tok_B)
        done_B = done_B | jnp.isin(tok_B, eos_ids)
        slot = P + i
        kv_mask = kv_mask.at[:, slot].set(True)
        logits, cache = model.decode_step(tok_B[:, None], (last_pos_B + 1 + i)[:, None], kv_mask, cache, slot)
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return i + 1, nxt, cache, kv_mask, done_B, out_BN

    out = jnp.full((tok_B.shape[0], steps), -1, jnp.int32)
    i, tok_B, cache, kv_mask_BS, done_B, out = jax.lax.while_loop(
        cond, body, (start, tok_B, cache, kv_mask_BS, done_B, out)
    )
    return (tok_B, cache, kv_mask_BS, done_B, last_pos_B), out, i


@jax.jit
def _take_rows(state, rows_b):
    return jax.tree.map(lambda x: jnp.take(x, rows_b, axis=0), state)


def _greedy(model: nnx.Module, ids_BP, mask_BP, eos_ids, max_new_tokens: int):
    """The whole greedy loop at a fixed batch: (out_BN, number of steps run), like one compiled loop."""
    state = _prefill(model, ids_BP, mask_BP, max_new_tokens=max_new_tokens)
    _, out, n = _decode(
        model, state, eos_ids, jnp.int32(0), steps=max_new_tokens, max_new_tokens=max_new_tokens
    )
    return out, n


def decode_batch(
    model: nnx.Module,
    ids_BP: np.ndarray,
    mask_BP: np.ndarray,
    n_real: int,
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    segment: int = 16,
    shrink: bool | None = None,
    sizes: Sequence[int] = SHRINK_SIZES,
    stats: dict | None = None,
    on_segment: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations (EOS excluded) of the first `n_real` rows of one left-padded batch.

    Decodes `segment` steps at a time; with `shrink`, between segments the rows still generating are
    gathered into the smallest of `sizes` that holds them. Finished rows stop costing compute:
    a batch whose answers mostly end early but where a few rows run on to max_new_tokens no longer pays
    the full batch for every step (row-wise the same greedy decoding; `stats["batch_sizes"]` records the
    batch size of each segment; `on_segment(step, rows still generating)` is called after each).
    `shrink=None`: on the CPU only, where a step's time follows the batch (40 ms at batch 1, 373 ms at 100
    for SmolLM2, bench/probes/decode_dots.py steps); an accelerator's small-batch step is bound by kernel
    launches, so there each smaller batch would cost a compile and save little (not measured on a GPU)."""
    if shrink is None:
        shrink = jax.default_backend() == "cpu"
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    eos_set = {int(e) for e in eos_ids}
    state = _prefill(model, jnp.asarray(ids_BP), jnp.asarray(mask_BP), max_new_tokens=max_new_tokens)
    rows = np.arange(ids_BP.shape[0])  # batch row -> result row (>= n_real: filler)
    pieces: list[list[np.ndarray]] = [[] for _ in range(n_real)]
    done = np.zeros(n_real, bool)
    i = 0
    while i < max_new_tokens:
        state, out, i_next = _decode(
            model, state, eos, jnp.int32(i), steps=segment, max_new_tokens=max_new_tokens
        )
        out_np, i = np.asarray(out), int(i_next)
        if stats is not None:
            stats.setdefault("batch_sizes", []).append(len(rows))
        for b, r in enumerate(rows):
            if r < n_real and not done[r]:
                pieces[r].append(out_np[b])
        done_b = np.asarray(state[3])
        for b, r in enumerate(rows):
            if r < n_real:
                done[r] |= bool(done_b[b])
        live = [b for b, r in enumerate(rows) if r < n_real and not done[r]]
        if on_segment is not None:
            on_segment(i, len(live))
        if not live:
            break
        size = min((s for s in sizes if s >= len(live)), default=len(rows))
        if shrink and size < len(rows):
            keep = np.asarray(live + [live[0]] * (size - len(live)), np.int32)
            state = _take_rows(state, jnp.asarray(keep))
            rows = np.concatenate([rows[keep[: len(live)]], np.full(size - len(live), n_real)])
    results = []
    for r in range(n_real):
        toks = []
        for t in np.concatenate(pieces[r]).tolist() if pieces[r] else []:
            if t in eos_set or t < 0:
                break
            toks.append(t)
        results.append(toks)
    return results


def left_pad(
    prompts: Sequence[Sequence[int]], batch_size: int, pad_id: int, mask_fn=None, min_bucket: int = 16
):
    """(ids_BP, mask_BP) for up to batch_size prompts, left-padded to a length bucket; filler rows get one
    dummy token (their results are discarded). `mask_fn(prompt) -> mask` overrides the all-ones mask."""
    P = bucket_length(max(len(p) for p in prompts), min_bucket)
    ids = np.full((batch_size, P), pad_id, np.int32)
    mask = np.zeros((batch_size, P), np.int32)
    for row, p in enumerate(prompts):
        p = np.asarray(p, np.int32)
        ids[row, P - len(p) :] = p
        mask[row, P - len(p) :] = 1 if mask_fn is None else mask_fn(p)
    mask[len(prompts) :, -1] = 1
    return ids, mask


def greedy_generate(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int = 200,
    batch_size: int = 32,
    min_bucket: int = 16,
    shrink: bool | None = None,
    mask_fn=None,
    on_segment: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations (token ids, EOS excluded) for each prompt (token ids); `shrink` as in
    `decode_batch`."""
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    empty = [i for i, p in enumerate(prompts) if not len(p)]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty")
    results: list[list[int]] = [[] for _ in prompts]
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths share a bucket
    for start in range(0, len(prompts), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], batch_size, pad_id, mask_fn, min_bucket)
        outs = decode_batch(
            model,
            ids,
            mask,
            len(idx),
            eos_ids=eos_ids,
            max_new_tokens=max_new_tokens,
            shrink=shrink,
            on_segment=on_segment,
        )
        for i, o in zip(idx, outs, strict=True):
            results[i] = o
        hostmem.release()  # the batch's KV cache pages go back to the OS before the next one is allocated
    return results


def cut_at_stop(text: str, stop_strings: Sequence[str] = ()) -> str:
    """Truncate at the first occurrence of any stop string (post-hoc, as the reference does)."""
    cut = len(text)
    for s in stop_strings:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut]


def generate_text(
    model: nnx.Module,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    *,
    max_new_tokens: int = 200,
    stop_strings: Sequence[str] = (),
    chat: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to text prompts; with `chat=True` each prompt goes through the chat template."""
    ids = []
    for p in prompts:
        if chat:
            msgs = p if isinstance(p, list) else [{"role": "user", "content": p}]
            if system_prompt is not None and msgs[0].get("role") != "system":
                msgs = [{"role": "system", "content": system_prompt}, *msgs]
            ids.append(
                list(
                    tokenizer.apply_chat_template(
                        msgs, add_generation_prompt=True, tokenize=True, return_dict=False
                    )
                )
            )
        else:
            ids.append(tokenizer(p, add_special_tokens=True)["input_ids"])
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    outs = greedy_generate(
        model,
        ids,
        eos_ids=eos,
        pad_id=pad,
        max_new_tokens=max_new_tokens,
        batch_size=min(batch_size, len(ids)),
    )
    return [cut_at_stop(tokenizer.decode(o, skip_special_tokens=True), stop_strings).strip() for o in outs]


def eos_token_ids(model: nnx.Module, tokenizer) -> list[int]:
    eos = model.cfg.eos_token_id
    ids = list(eos) if isinstance(eos, list | tuple) else ([eos] if eos is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model config nor the tokenizer defines an EOS token")
    return ids
