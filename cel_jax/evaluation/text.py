"""Token ids to the texts OU scores: decoding with transformers 4.45's clean-up, labelled targets, and the
(ground truth, generation, input) triples of ROUGE (OU `eval_text_similarity`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cel_jax.data.format import IGNORE
from cel_jax.evaluation import metrics as M

Item = Mapping[str, Any]


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
