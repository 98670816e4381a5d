"""Tiny offline tokenizers for tests: a byte-level BPE trained in milliseconds on a fixed text.

`make_tokenizer("llama3")` mimics Llama-3.x-Instruct: BOS `<|begin_of_text|>` added by the post-processor,
EOS `<|eot_id|>`, pad `<|pad|>` (or none with `pad=False`), and a Llama-3-style Jinja chat template
with an optional system block that carries the `date_string` lines. `make_tokenizer("llama2")` mimics
Llama-2: BOS `<s>`, EOS `</s>`, no pad token, no chat template (tag templates only).
Byte-level BPE round-trips any text exactly, so decode(encode(x)) == x.
"""

import functools

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = (
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|pad|>",
    "<s>",
    "</s>",
)

CORPUS = """\
Question: Where was the painter born? Answer: The painter was born in a small harbour town.
The author wrote three novels about lighthouses, clocks and the people who repair them.
Her father was a fisherman and her mother was a schoolteacher in the same village.
He received a prize for his first book and later moved to the city to work as an editor.
What is the name of the author's best-known work? It is a book of short stories.
You are a helpful assistant. Cutting Knowledge Date: December 2023. Today Date: 10 Apr 2025.
system user assistant [INST] [/INST] Answer: Question: the of and in was is a to for with
"""

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if date_string is not defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{{- messages[0]['content'] | trim }}{{- '<|eot_id|>' }}"
    "{%- set messages = messages[1:] %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@functools.lru_cache(maxsize=1)
def _backend_json(vocab_size: int = 384) -> str:
    """Trains the byte-level BPE once per session; returns its JSON (copied for each wrapper)."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tok.to_str()


def make_tokenizer(style: str = "llama3", pad: bool = True) -> PreTrainedTokenizerFast:
    """A fresh tiny tokenizer; `style` in {"llama3", "llama2"}; `pad=False` leaves pad_token unset."""
    backend = tokenizers.Tokenizer.from_str(_backend_json())
    if style == "llama3":
        bos, eos, pad_tok, template = "<|begin_of_text|>", "<|eot_id|>", "<|pad|>", LLAMA3_CHAT_TEMPLATE
    elif style == "llama2":
        bos, eos, pad_tok, template = "<s>", "</s>", None, None
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
    )
    kwargs = dict(bos_token=bos, eos_token=eos)
    if pad and pad_tok is not None:
        kwargs["pad_token"] = pad_tok
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if template is not None:
        tok.chat_template = template
    return tok
