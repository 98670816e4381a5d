"""A tiny random Llama + the tiny offline tokenizer, saved as an HF folder (engine and eval tests)."""

from pathlib import Path

from conftest_tokenizer import make_tokenizer
from flax import nnx

from cel_jax.model import Llama, LlamaConfig, hf_io


def make_tiny_model_dir(path, seed: int = 0, **cfg_kw) -> Path:
    tok = make_tokenizer("llama3")
    vocab = ((len(tok) + 63) // 64) * 64
    cfg = LlamaConfig.tiny(
        vocab_size=vocab,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **cfg_kw,
    )
    model = Llama(cfg, rngs=nnx.Rngs(seed))
    return hf_io.save_pretrained(model, tok, Path(path))
