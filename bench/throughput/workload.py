"""What both sides compute on: the FLOP formula, the training batch and eval items from TOFU rows
(formatted exactly like training and the eval), and the agreement of two sides' generated token ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def model_flops(cfg, n_rows: int, seq_len: int) -> dict:
    """Training FLOPs of one step over n_rows padded rows of seq_len tokens (fwd + bwd = 3x fwd).

    per token: 6·N (every parameter in one multiply-add forward, two backward; the tied embedding counts
    once, as the LM-head matmul) + 12·L·T·(n_heads·head_dim) (QK^T and PV over the full T×T score
    matrix, which both implementations compute; causal masking does not skip work).
    """
    if n_rows < 1 or seq_len < 1:
        raise ValueError(f"n_rows and seq_len must be >= 1, got {n_rows}, {seq_len}")
    n_params = int(cfg.num_params)
    tokens = n_rows * seq_len
    dense = 6 * n_params * tokens
    attn = 12 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim * tokens
    return {"n_params": n_params, "tokens": tokens, "dense": dense, "attention": attn, "total": dense + attn}


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file (a TOFU split)."""
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def pad_batch(items: Sequence[dict], pad_id: int, length: int) -> dict[str, np.ndarray]:
    """Encoded items right padded to `length` (cel_jax.data.pad_items, as training pads them)."""
    from cel_jax.data import pad_items

    return pad_items(items, pad_id, length=length)


def train_batch(
    tok, forget_rows: Sequence[dict], retain_rows: Sequence[dict], batch: int, seq_len: int
) -> dict:
    """{"forget": {...}, "retain": {...}} of int32 [1, B, T] arrays (M = 1), right padded to seq_len, labels
    IGNORE on the prompt, formatted exactly like training (cel_jax.data.encode_qa, chat template)."""
    from cel_jax import data

    pad = data.pad_id_of(tok)
    out = {}
    for name, rows in (("forget", forget_rows), ("retain", retain_rows)):
        items = []
        for r in rows:
            it = data.encode_qa(tok, r["question"], r["answer"])
            if len(it["input_ids"]) <= seq_len:
                items.append(it)
            if len(items) == batch:
                break
        if len(items) < batch:
            raise ValueError(f"only {len(items)} {name} rows fit in seq_len={seq_len}; need batch={batch}")
        part = pad_batch(items, pad, seq_len)
        out[name] = {k: part[k][None].astype(np.int32) for k in ("input_ids", "attention_mask", "labels")}
    return out


def eval_items(tok, rows: Sequence[dict]) -> tuple[list[dict], list[list[int]]]:
    """(probability items with labels, generation prompts) for TOFU rows, chat template as the eval."""
    from cel_jax import data

    items = [data.encode_qa(tok, r["question"], r["answer"]) for r in rows]
    prompts = [data.encode_qa(tok, r["question"], r["answer"], generate=True)["input_ids"] for r in rows]
    return items, prompts


def agreement(ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]) -> dict:
    """exact: share of identical sequences; token: common-prefix tokens / longer length, summed over items;
    first_divergence: per item, the index of the first differing token (None when identical)."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} vs {len(theirs)} sequences")
    same, pref, total, first = 0, 0, 0, []
    for a, b in zip(ours, theirs, strict=True):
        a, b = list(a), list(b)
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        same += a == b
        pref += k
        total += max(len(a), len(b))
        first.append(None if a == b else k)
    return {
        "exact": same / max(len(ours), 1),
        "token": pref / total if total else 1.0,
        "first_divergence": first,
    }
