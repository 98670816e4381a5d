"""cel_jax: constrained (primal-dual) unlearning of LLMs in JAX/Flax."""

from cel_jax.hf_io import load_pretrained, save_pretrained

__all__ = ["load_pretrained", "save_pretrained"]
__version__ = "0.1.0"
