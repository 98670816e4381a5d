"""The Llama family's parameter map: Hugging Face tensor names <-> our NNX parameter paths.

Axes: D model, N q-heads, K kv-heads, H head_dim. HF stores Linear weights as [out, in]; we store
[in, out] with the heads split out (q [D, N, H], o [N, H, D]), so each entry carries both conversions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cel_jax.model.config import LlamaConfig

Transform = Callable[[np.ndarray, LlamaConfig], np.ndarray]
KeyTable = dict[str, tuple[str, Transform, Transform]]
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some exports carry; recomputed from the config


def _ident(w, c):
    return w


def _t(w, c):
    return w.T


def key_table(c: LlamaConfig) -> KeyTable:
    """{our param path: (hf key, hf->ours, ours->hf)}; each pair of transforms is an exact inverse."""
    D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    tab: KeyTable = {
        "embed": ("model.embed_tokens.weight", _ident, _ident),
        "final_norm.scale": ("model.norm.weight", _ident, _ident),
    }
    if not c.tie_word_embeddings:
        tab["lm_head"] = ("lm_head.weight", _t, _t)
    for i in range(c.n_layers):
        hf, us = f"model.layers.{i}.", f"layers.{i}."
        tab[us + "attn_norm.scale"] = (hf + "input_layernorm.weight", _ident, _ident)
        tab[us + "mlp_norm.scale"] = (hf + "post_attention_layernorm.weight", _ident, _ident)
        for name, n in (("q", N), ("k", K), ("v", K)):
            tab[us + f"attn.{name}"] = (
                hf + f"self_attn.{name}_proj.weight",
                lambda w, c, n=n: w.T.reshape(D, n, H),
                lambda w, c: w.reshape(D, -1).T,
            )
            if c.attention_bias:
                tab[us + f"attn.{name}_bias"] = (
                    hf + f"self_attn.{name}_proj.bias",
                    lambda w, c, n=n: w.reshape(n, H),
                    lambda w, c: w.reshape(-1),
                )
        tab[us + "attn.o"] = (
            hf + "self_attn.o_proj.weight",
            lambda w, c: w.T.reshape(N, H, D),
            lambda w, c: w.reshape(-1, D).T,
        )
        if c.o_bias:
            tab[us + "attn.o_bias"] = (hf + "self_attn.o_proj.bias", _ident, _ident)
        for name in ("gate", "up", "down"):
            tab[us + f"mlp.{name}"] = (hf + f"mlp.{name}_proj.weight", _t, _t)
            if c.mlp_bias:
                tab[us + f"mlp.{name}_bias"] = (hf + f"mlp.{name}_proj.bias", _ident, _ident)
    return tab


def ignorable_hf_key(c: LlamaConfig, key: str) -> bool:
    """Checkpoint tensors with no place in the model that loading may skip (a tied model's lm_head copy)."""
    return key.endswith(IGNORED_HF_SUFFIXES) or (c.tie_word_embeddings and key == "lm_head.weight")
