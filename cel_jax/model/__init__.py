"""Flax NNX Llama-family model."""

from cel_jax.model.config import LlamaConfig
from cel_jax.model.llama import Llama, init_cache

__all__ = ["Llama", "LlamaConfig", "init_cache"]
