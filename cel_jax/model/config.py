"""Llama-family model configuration and its mapping to and from Hugging Face `config.json`.

Covers Llama-2, Llama-3.x (llama3 RoPE scaling), SmolLM2, Mistral-style and Qwen2-style (q/k/v bias)
checkpoints. Anything we do not implement fails loudly in `from_hf_dict` instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_ACTIVATIONS = ("silu",)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    d_model: int  # hidden_size
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int  # intermediate_size
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v bias (Llama attention_bias, Qwen2)
    o_bias: bool = False  # o_proj bias (Llama attention_bias=True has it, Qwen2 does not)
    mlp_bias: bool = False
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # Runtime choices (not part of the HF checkpoint).
    param_dtype: str = "float32"
    dtype: str = "float32"  # matmul compute dtype; norms, softmax and logits stay float32
    remat: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable

    def __post_init__(self):
        if self.model_type == "llama" and self.o_bias != self.attention_bias:
            raise ValueError("Llama's attention_bias covers q, k, v and o together")
        if self.model_type == "qwen2" and (not self.attention_bias or self.o_bias):
            raise ValueError("Qwen2 has q/k/v biases and no o_proj bias")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not supported (have {SUPPORTED_ROPE_TYPES})")
        if self.remat not in ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"):
            raise ValueError(f"unknown remat policy {self.remat!r}")

    def replace(self, **kw) -> LlamaConfig:
        return dataclasses.replace(self, **kw)

    @property
    def num_params(self) -> int:
        D, F, H = self.d_model, self.d_ff, self.head_dim
        attn = D * H * (self.n_heads * 2 + self.n_kv_heads * 2)
        if self.attention_bias:
            attn += H * (self.n_heads + 2 * self.n_kv_heads)
        if self.o_bias:
            attn += D
        mlp = 3 * D * F + (2 * F + D if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * D
        head = 0 if self.tie_word_embeddings else D * self.vocab_size
        return self.vocab_size * D + self.n_layers * per_layer + D + head

    @classmethod
    def tiny(cls, **kw) -> LlamaConfig:
        """A small random-init config for tests (d=64, 2 layers, GQA 4q/2kv)."""
        base = dict(
            vocab_size=256,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            head_dim=16,
            d_ff=128,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        base.update(kw)
        return cls(**base)

    # ---------------------------------------------------------------- HF config.json mapping
    @classmethod
    def from_hf_dict(cls, c: dict[str, Any], **runtime) -> LlamaConfig:
        mt = c.get("model_type", "llama")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {mt!r} is not supported (have {SUPPORTED_MODEL_TYPES})")
        act = c.get("hidden_act", "silu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} is not supported (have {SUPPORTED_ACTIVATIONS})")
        n_heads = c["num_attention_heads"]
        d_model = c["hidden_size"]
        head_dim = c.get("head_dim") or d_model // n_heads
        max_pos = c.get("max_position_embeddings", 2048)
        # Sliding-window attention: only accepted when it can never bind.
        window = c.get("sliding_window")
        use_window = c.get("use_sliding_window", mt == "mistral")
        if window is not None and use_window and window < max_pos:
            raise ValueError(
                f"sliding_window={window} < max_position_embeddings={max_pos} is not supported; "
                "set max_position_embeddings to at most the window to use this checkpoint"
            )
        if mt == "qwen2" and c.get("use_sliding_window"):
            raise ValueError("Qwen2 use_sliding_window=True is not supported")
        if c.get("pretraining_tp", 1) not in (1, None):
            raise ValueError("pretraining_tp > 1 is not supported")
        # RoPE: transformers-5 `rope_parameters`, or older `rope_theta` + `rope_scaling`.
        rp = dict(c.get("rope_parameters") or {})
        scaling = c.get("rope_scaling") or {}
        theta = rp.get("rope_theta", c.get("rope_theta", 10000.0))
        params = {**scaling, **{k: v for k, v in rp.items() if k != "rope_theta"}}
        rope_type = params.get("rope_type", params.get("type", "default")) or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope type {rope_type!r} is not supported (have {SUPPORTED_ROPE_TYPES})")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")
        attention_bias = True if mt == "qwen2" else bool(c.get("attention_bias", False))
        o_bias = False if mt == "qwen2" else attention_bias
        return cls(
            vocab_size=c["vocab_size"],
            d_model=d_model,
            n_layers=c["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=c.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            d_ff=c["intermediate_size"],
            rms_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_factor=float(params.get("factor", 1.0)),
            rope_low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            rope_original_max_position=int(params.get("original_max_position_embeddings", 8192)),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            o_bias=o_bias,
            mlp_bias=bool(c.get("mlp_bias", False)),
            model_type=mt,
            bos_token_id=c.get("bos_token_id"),
            eos_token_id=c.get("eos_token_id"),
            pad_token_id=c.get("pad_token_id"),
            **runtime,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": self.rope_type}
        if self.rope_type == "linear":
            rope["factor"] = self.rope_factor
        elif self.rope_type == "llama3":
            rope.update(
                factor=self.rope_factor,
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position,
            )
        d = {
            "architectures": [arch[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.d_ff,
            "rms_norm_eps": self.rms_eps,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "rope_scaling": None if self.rope_type == "default" else rope,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
            "use_cache": True,
            "initializer_range": 0.02,
        }
        if self.model_type == "llama":
            d.update(
                attention_bias=self.attention_bias,
                mlp_bias=self.mlp_bias,
                attention_dropout=0.0,
                pretraining_tp=1,
            )
        elif self.model_type == "mistral":
            d.update(sliding_window=None, attention_dropout=0.0)
        elif self.model_type == "qwen2":
            d.update(
                use_sliding_window=False,
                sliding_window=None,
                max_window_layers=self.n_layers,
                attention_dropout=0.0,
            )
        return d


def rope_inv_freq(cfg: LlamaConfig):
    """Inverse frequencies [H/2] exactly as transformers computes them (float32), incl. llama3 scaling."""
    import numpy as np

    H = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, H, 2, dtype=np.int64).astype(np.float32) / H))
    inv = inv.astype(np.float32)
    if cfg.rope_type == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor, lo, hi = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old = cfg.rope_original_max_position
        low_wl, high_wl = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv
