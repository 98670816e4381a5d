"""Flax NNX decoder models read from Hugging Face checkpoints; `families` maps HF model_type to each."""

from cel_jax.model.config import LlamaConfig
from cel_jax.model.llama import Llama, init_cache

__all__ = ["Llama", "LlamaConfig", "init_cache"]
