"""Tokenisation into input_ids/labels exactly as open-unlearning's preprocess_* functions.

Items are dicts of Python int lists: `input_ids`, `labels` (IGNORE on prompt tokens), plus `answer`
(the target text) for generation items. Chat-template and tag-template (base model) paths; MUSE
pretraining chunks and prefix/completion items. The reference: open-unlearning's `src/data/utils.py`
(`preprocess_chat_instance`, `preprocess_pretraining_instance`) with the template arguments of its
`configs/model/*.yaml`; deliberate differences are listed in docs/differences.md.
"""

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

IGNORE = -100  # label of a position no loss reads (the HF convention); the one definition in cel_jax
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_DATE_STRING = "10 Apr 2025"  # pinned in open-unlearning PR #101 (else the template uses today)


@dataclasses.dataclass(frozen=True)
class Template:
    """How a (question, answer) pair becomes text; mirrors open-unlearning's `template_args`."""

    apply_chat_template: bool = True
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # chat path; None or "" = no system message
    date_string: str | None = DEFAULT_DATE_STRING  # chat path; None = not passed to the template
    system_prompt_with_special_tokens: str = ""  # tag path only
    user_start_tag: str = ""
    user_end_tag: str = ""
    asst_start_tag: str = ""
    asst_end_tag: str = ""


TEMPLATES: dict[str, Template] = {
    "chat": Template(),
    # configs/model/Llama-2-7b-chat-hf.yaml: no space before the answer (asst_start_tag "").
    "llama2_chat": Template(
        apply_chat_template=False, user_start_tag="[INST] ", user_end_tag=" [/INST]", asst_end_tag=" "
    ),
    # configs/model/Llama-2-7b-hf.yaml (also 13b-hf, phi-1_5; MUSE knowmem).
    "qa_base": Template(
        apply_chat_template=False,
        user_start_tag="Question: ",
        user_end_tag="\n",
        asst_start_tag="Answer: ",
        asst_end_tag="\n\n",
    ),
    # configs/model/Llama-3.2-1B-Instruct.yaml, tag form.
    "llama3_tags": Template(
        apply_chat_template=False,
        system_prompt_with_special_tokens=(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "You are a helpful assistant.<|eot_id|>"
        ),
        user_start_tag="<|start_header_id|>user<|end_header_id|>\n\n",
        user_end_tag="<|eot_id|>",
        asst_start_tag="<|start_header_id|>assistant<|end_header_id|>\n\n",
        asst_end_tag="<|eot_id|>",
    ),
}


def make_template(spec: str | Mapping[str, Any] | Template | None = None) -> Template:
    """A Template from a preset name, a mapping of fields (e.g. a ConfigDict's to_dict()), or None."""
    if spec is None:
        return TEMPLATES["chat"]
    if isinstance(spec, Template):
        return spec
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise ValueError(f"unknown template {spec!r}; presets: {sorted(TEMPLATES)}")
        return TEMPLATES[spec]
    fields = {f.name for f in dataclasses.fields(Template)}
    unknown = set(spec) - fields
    if unknown:
        raise ValueError(f"unknown template fields {sorted(unknown)}; allowed: {sorted(fields)}")
    return Template(**dict(spec))


def eos_id_of(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one before formatting data")
    return int(tokenizer.eos_token_id)


def pad_id_of(tokenizer: Any) -> int:
    """pad_token_id, or the EOS id when the tokenizer has no pad token (as the reference does)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id_of(tokenizer)


def as_ids(out: Any) -> list[int]:
    """Token ids from whatever apply_chat_template/tokenizer returned (list, dict, BatchEncoding)."""
    if isinstance(out, Mapping):  # dict or BatchEncoding (transformers 5 default)
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if out and isinstance(out[0], list | tuple):  # a batch of one
        if len(out) != 1:
            raise ValueError(f"expected one token sequence, got a batch of {len(out)}")
        out = list(out[0])
    return [int(t) for t in out]


# ---------------------------------------------------------------------------------------------------
# QA items


def encode_qa(
    tokenizer: Any,
    question: str,
    answer: str,
    template: Template | str | None = None,
    *,
    fewshot: Sequence[tuple[str, str]] = (),
    max_length: int = 512,
    on_too_long: str = "error",
    on_no_target: str = "warn",
    generate: bool = False,
) -> dict:
    """One QA item as preprocess_chat_instance builds it.

    Train items: input_ids = chat_ids, labels = IGNORE on the prompt, ids on answer + EOS.
    Generation items (`generate=True`): input_ids = prompt_ids, labels = chat_ids (whole
    conversation, as the reference), answer = the target text.
    `on_too_long`: "error" (raise when the sequence exceeds max_length) or "truncate" (the
    reference's tag-path truncation to max_length, then EOS, so max_length + 1 is possible).
    `on_no_target`: "warn" (reference) or "error" when no label survives masking.
    """
    template = make_template(template)
    if on_too_long not in ("error", "truncate"):
        raise ValueError(f"on_too_long must be 'error' or 'truncate', got {on_too_long!r}")
    if on_no_target not in ("warn", "error"):
        raise ValueError(f"on_no_target must be 'warn' or 'error', got {on_no_target!r}")
    eos = eos_id_of(tokenizer)
    pairs = [*fewshot, (question, answer)]
    if template.apply_chat_template:
        chat_ids, prompt_ids = _chat_ids(tokenizer, template, pairs)
        if _final_len(chat_ids, eos) > max_length:
            if on_too_long == "error":
                raise ValueError(_too_long_msg(_final_len(chat_ids, eos), max_length, question))
            chat_ids, prompt_ids = chat_ids[:max_length], prompt_ids[:max_length]
    else:
        chat_ids, prompt_ids = _tag_ids(tokenizer, template, pairs, max_length, on_too_long, question)
    if not chat_ids or chat_ids[-1] != eos:
        chat_ids = chat_ids + [eos]
    if chat_ids[: len(prompt_ids)] != prompt_ids:
        warnings.warn("prompt tokens are not a prefix of the full conversation's tokens", stacklevel=2)
    if generate:
        return {"input_ids": prompt_ids, "labels": chat_ids, "answer": answer}
    n_prompt = min(len(prompt_ids), len(chat_ids))
    labels = [IGNORE] * n_prompt + chat_ids[n_prompt:]
    if n_prompt == len(chat_ids):
        msg = f"tokenization mismatch: no target tokens left for question {question[:60]!r}"
        if on_no_target == "error":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return {"input_ids": chat_ids, "labels": labels}


def encode_qa_rows(
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    template: Template | str | None = None,
    *,
    question_key: str = "question",
    answer_key: str = "answer",
    fewshot_rows: Sequence[Mapping[str, Any]] = (),
    **kw: Any,
) -> list:
    """encode_qa over rows; a row whose answer is a list gives a list of items (one per answer)."""
    fewshot = [(r[question_key], r[answer_key]) for r in fewshot_rows]
    out = []
    for row in rows:
        q, a = row[question_key], row[answer_key]
        if isinstance(a, str):
            out.append(encode_qa(tokenizer, q, a, template, fewshot=fewshot, **kw))
        else:
            out.append([encode_qa(tokenizer, q, ai, template, fewshot=fewshot, **kw) for ai in a])
    return out


def _chat_ids(tokenizer: Any, template: Template, pairs: Sequence[tuple[str, str]]) -> tuple[list, list]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("template.apply_chat_template is set but the tokenizer has no chat_template")
    chat = [{"role": "system", "content": template.system_prompt}] if template.system_prompt else []
    for q, a in pairs:
        chat += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    kw = {"date_string": template.date_string} if template.date_string is not None else {}
    chat_ids = tokenizer.apply_chat_template(
        chat, tokenize=True, add_generation_prompt=False, return_dict=False, **kw
    )
    prompt_ids = tokenizer.apply_chat_template(
        chat[:-1], tokenize=True, add_generation_prompt=True, return_dict=False, **kw
    )
    return as_ids(chat_ids), as_ids(prompt_ids)


def tag_prompt(template: Template, pairs: Sequence[tuple[str, str]]) -> str:
    """The tag-template prompt text: system + few-shot turns + final question + asst_start_tag."""
    t = template
    text = t.system_prompt_with_special_tokens or ""
    for q, a in pairs[:-1]:
        text += t.user_start_tag + q + t.user_end_tag + t.asst_start_tag + a + t.asst_end_tag
    return text + t.user_start_tag + pairs[-1][0] + t.user_end_tag + t.asst_start_tag


def _tag_ids(
    tokenizer: Any,
    template: Template,
    pairs: Sequence[tuple[str, str]],
    max_length: int,
    on_too_long: str,
    question: str,
) -> tuple[list, list]:
    prompt = tag_prompt(template, pairs)
    full = prompt + pairs[-1][1]
    if on_too_long == "error":
        chat_ids = as_ids(tokenizer(full, add_special_tokens=True))
        eos = eos_id_of(tokenizer)
        if _final_len(chat_ids, eos) > max_length:
            raise ValueError(_too_long_msg(_final_len(chat_ids, eos), max_length, question))
        return chat_ids, as_ids(tokenizer(prompt, add_special_tokens=True))
    kw = dict(add_special_tokens=True, max_length=max_length, truncation=True)
    return as_ids(tokenizer(full, **kw)), as_ids(tokenizer(prompt, **kw))


def _final_len(ids: list[int], eos: int) -> int:
    """Length after the EOS rule (EOS appended unless the sequence already ends with it)."""
    return len(ids) + (not ids or ids[-1] != eos)


def _too_long_msg(n: int, max_length: int, question: str) -> str:
    return (
        f"item of {n} tokens (with EOS) exceeds max_length={max_length} (question {question[:60]!r}); "
        "raise max_length or pass on_too_long='truncate'"
    )


# ---------------------------------------------------------------------------------------------------
# MUSE pretraining / completion items


def encode_completion(
    tokenizer: Any,
    prefix: str,
    text: str,
    *,
    max_length: int,
    insert_space: bool = False,
    generate: bool = False,
) -> dict:
    """preprocess_pretraining_instance: labels on the text after the prefix; no EOS appended.

    The full sequence is cut to len(prefix_ids) + max_length. With an empty prefix only the first
    token (BOS) is masked. Generation items: input_ids = prefix ids, answer = the text.
    """
    full = as_ids(tokenizer(prefix + (" " if insert_space else "") + text, add_special_tokens=True))
    prefix_ids = as_ids(tokenizer(prefix, add_special_tokens=True))
    full = full[: len(prefix_ids) + max_length]
    n_masked = min(max(len(prefix_ids), 1), len(full))
    labels = [IGNORE] * n_masked + full[n_masked:]
    if generate:
        return {"input_ids": prefix_ids, "labels": labels, "answer": text}
    return {"input_ids": full, "labels": labels}


def chunk_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[str]:
    """PretrainingDataset chunking: join with blank lines, tokenise (no specials), cut into
    len // max_length + 1 windows of max_length tokens, decode each back to text.

    Deliberate difference: the reference keeps a trailing empty chunk when the token count is an
    exact multiple of max_length (it would have no target tokens); we drop empty chunks.
    """
    ids = as_ids(tokenizer("\n\n".join(texts), add_special_tokens=False))
    n_chunks = len(ids) // max_length + 1
    chunks = [tokenizer.decode(ids[i * max_length : (i + 1) * max_length]) for i in range(n_chunks)]
    return [c for c in chunks if c]


def encode_pretraining(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict]:
    """PretrainingDataset items: chunk_texts, then each chunk re-tokenised with BOS (empty prefix)."""
    return [
        encode_completion(tokenizer, "", chunk, max_length=max_length)
        for chunk in chunk_texts(tokenizer, texts, max_length)
    ]
