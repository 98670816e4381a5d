"""Model configs for planning without any download: a local folder's config.json, a cached hub model,
or a preset of the public model cards (`PRESETS`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cel_jax.model import families
from cel_jax.model.config import LlamaConfig


def _hf(vocab, d, layers, heads, kv, ff, tie, theta, max_pos, llama3_factor=None, **extra) -> dict[str, Any]:
    """A Hugging Face Llama config.json dict."""
    c = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=d // heads,
        intermediate_size=ff,
        hidden_act="silu",
        tie_word_embeddings=tie,
        rope_theta=theta,
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
    )
    if llama3_factor:
        c["rope_scaling"] = dict(
            rope_type="llama3",
            factor=llama3_factor,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
    return c | extra


_L3 = dict(bos_token_id=128000, eos_token_id=128001)
# config.json of the presets (public model cards), for planning without any download:
#   vocab, d_model, layers, q heads, kv heads, d_ff, tied, rope theta, max positions, llama3 RoPE factor
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": _hf(49152, 576, 30, 9, 3, 1536, True, 1e5, 8192, bos_token_id=1, eos_token_id=2),
    "llama-3.2-1b": _hf(128256, 2048, 16, 32, 8, 8192, True, 5e5, 131072, 32.0, **_L3),
    "llama-3.2-3b": _hf(128256, 3072, 28, 24, 8, 8192, True, 5e5, 131072, 32.0, **_L3),
    "llama-3.1-8b": _hf(128256, 4096, 32, 32, 8, 14336, False, 5e5, 131072, 8.0, **_L3),
    "llama-2-7b": _hf(32000, 4096, 32, 32, 32, 11008, False, 1e4, 4096, bos_token_id=1, eos_token_id=2),
}


# ------------------------------------------------------------------------------------------ model
def _preset_key(name: str) -> str | None:
    """Longest preset name contained in `name` (hub names, aliases, fine-tuned variants)."""
    norm = name.strip().rstrip("/").lower().replace("_", "-")
    hits = [k for k in PRESETS if k in norm]
    return max(hits, key=len) if hits else None


def _cached_hf_config(name: str) -> Path | None:
    """config.json of `name` when it is already on disk (HF hub cache or cel_jax's embedded cache)."""
    try:
        from cel_jax.model import embedded

        if name in embedded.ALIASES:
            p = embedded.cache_dir() / "models" / name / "config.json"
            return p if p.is_file() else None
    except Exception:  # noqa: BLE001 - optional: planning never needs the embedded model
        pass
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(name, "config.json")
        return Path(p) if isinstance(p, str) else None
    except Exception:  # noqa: BLE001 - not a hub name, or huggingface_hub missing
        return None


def hf_config_dict(name_or_path: str) -> dict[str, Any]:
    """The HF config dict of a local folder / config.json, a cached hub model, or a preset (no download)."""
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir() and (p / "config.json").is_file():
        return json.loads((p / "config.json").read_text())
    if p.is_file() and p.name.endswith(".json"):
        return json.loads(p.read_text())
    cached = _cached_hf_config(str(name_or_path))
    if cached is not None:
        return json.loads(cached.read_text())
    key = _preset_key(str(name_or_path))
    if key is not None:
        return dict(PRESETS[key])
    raise ValueError(
        f"cannot plan for model {name_or_path!r}: not a local folder with config.json, not in the HF cache, "
        f"and not a known preset {sorted(PRESETS)}"
    )


def model_config(name_or_path: str, **runtime: Any) -> LlamaConfig:
    """LlamaConfig for `name_or_path` with runtime fields (param_dtype, dtype, remat)."""
    return families.config_from_hf(hf_config_dict(name_or_path), **runtime)
