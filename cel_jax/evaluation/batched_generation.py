"""Greedy generation of the evaluation prompts (ROUGE): length-sorted, even batches over
`generate.greedy_generate`, with the reference's prompt masks under `compat`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cel_jax.evaluation import generate as gen
from cel_jax.evaluation.batching import even_batch, key_mask, progress_bar


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
    with progress_bar(n_batches, desc, progress) as bar:

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
