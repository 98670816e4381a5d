"""Jitted batched greedy decoding with a KV cache, left padding, EOS and stop strings.

Axes: B batch, P padded prompt length (a bucket), S cache slots (= P + max_new_tokens), V vocab.
Prompts are left-padded to a length bucket, so the jitted prefill/decode compiles once per
(B, P bucket, max_new_tokens), not once per prompt length. Positions follow HF `generate`:
cumsum(mask) - 1, so left padding does not shift RoPE.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cel_jax.model.llama import Llama, init_cache


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= n (at least `minimum`): few distinct compiled shapes."""
    b = minimum
    while b < n:
        b *= 2
    return b


@functools.partial(jax.jit, static_argnames=("max_new_tokens",))
def _greedy(model: Llama, ids_BP, mask_BP, eos_ids, max_new_tokens: int):
    B, P = ids_BP.shape
    S = P + max_new_tokens
    cache = init_cache(model.cfg, B, S)
    kv_mask_BS = jnp.concatenate([mask_BP.astype(bool), jnp.zeros((B, max_new_tokens), bool)], axis=1)
    pos_BP = jnp.maximum(jnp.cumsum(mask_BP, axis=1) - 1, 0)
    logits, cache = model.decode_step(ids_BP, pos_BP, kv_mask_BS, cache, 0, last_only=True)  # left-padded
    nxt_B = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    last_pos_B = pos_BP[:, -1]

    def cond(c):
        i, _, _, _, done_B, _ = c
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(c):
        i, tok_B, cache, kv_mask, done_B, out_BN = c
        tok_B = jnp.where(done_B, eos_ids[0], tok_B)
        out_BN = out_BN.at[:, i].set(tok_B)
        done_B = done_B | jnp.isin(tok_B, eos_ids)
        slot = P + i
        kv_mask = kv_mask.at[:, slot].set(True)
        logits, cache = model.decode_step(tok_B[:, None], (last_pos_B + 1 + i)[:, None], kv_mask, cache, slot)
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return i + 1, nxt, cache, kv_mask, done_B, out_BN

    out = jnp.full((B, max_new_tokens), -1, jnp.int32)
    init = (jnp.int32(0), nxt_B, cache, kv_mask_BS, jnp.zeros((B,), bool), out)
    n, _, _, _, _, out = jax.lax.while_loop(cond, body, init)
    return out, n


def greedy_generate(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int = 200,
    batch_size: int = 32,
    min_bucket: int = 16,
) -> list[list[int]]:
    """Greedy continuations (token ids, EOS excluded) for each prompt (token ids)."""
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    results: list[list[int]] = [[] for _ in prompts]
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths share a bucket
    for start in range(0, len(prompts), batch_size):
        idx = order[start : start + batch_size]
        P = bucket_length(max(len(prompts[i]) for i in idx), min_bucket)
        ids = np.full((batch_size, P), pad_id, np.int32)
        mask = np.zeros((batch_size, P), np.int32)
        for row, i in enumerate(idx):
            p = list(prompts[i])
            if not p:
                raise ValueError(f"prompt {i} is empty")
            ids[row, P - len(p) :] = p
            mask[row, P - len(p) :] = 1
        mask[len(idx) :, -1] = 1  # filler rows: one dummy token, results discarded
        out, n = _greedy(model, jnp.asarray(ids), jnp.asarray(mask), eos, max_new_tokens=max_new_tokens)
        out = np.asarray(out)[:, : int(n)]
        eos_set = set(int(e) for e in eos_ids)
        for row, i in enumerate(idx):
            toks = []
            for t in out[row].tolist():
                if t in eos_set or t < 0:
                    break
                toks.append(t)
            results[i] = toks
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
    model: Llama,
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


def eos_token_ids(model: Llama, tokenizer) -> list[int]:
    eos = model.cfg.eos_token_id
    ids = list(eos) if isinstance(eos, list | tuple) else ([eos] if eos is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model config nor the tokenizer defines an EOS token")
    return ids
