"""Model-only commands: `generate` and `export`."""

from __future__ import annotations


def generate(config, flags) -> int:
    from cel_jax.evaluation import generate as gen
    from cel_jax.model import hf_io

    prompts = flags.prompt or ["What is the capital of France?"]
    model, tok = hf_io.load_pretrained(flags.model, dtype=flags.dtype)
    answers = gen.generate_text(model, tok, prompts, max_new_tokens=flags.max_new_tokens)
    for p, a in zip(prompts, answers, strict=True):
        print(f"Q: {p}\nA: {a}\n")
    return 0


def export(config, flags) -> int:
    from cel_jax.errors import UserError
    from cel_jax.model import hf_io

    if not flags.out:
        raise UserError("`cel-jax export` needs --out=DIR")
    model, tok = hf_io.load_pretrained(flags.model)
    out = hf_io.save_pretrained(model, tok, flags.out)
    print(f"wrote {out}")
    return 0
