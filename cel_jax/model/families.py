"""Model families: HF `config.json` `model_type` -> how to build, configure and (de)serialise the model.

hf_io reads `model_type` first and looks it up here, so an unsupported checkpoint fails before any weight
is read. Adding a family (Gemma, Qwen3, ...) means writing its model class, its config reader/writer and
its parameter map (see llama.py, config.py, llama_params.py), then `register(Family(...))` once at import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from cel_jax.model import llama, llama_params
from cel_jax.model.config import SUPPORTED_MODEL_TYPES, LlamaConfig

DEFAULT_MODEL_TYPE = "llama"  # what a config.json without `model_type` is read as


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture family.

    model_cls(cfg, rngs=nnx.Rngs) builds the NNX model; its instances expose `.cfg`.
    config_from_hf(hf_dict, **runtime) -> cfg (runtime: dtype, param_dtype, remat); config_to_hf(cfg) -> dict.
    key_table(cfg) -> {our param path: (hf key, hf->ours, ours->hf)} with exact-inverse transforms.
    init_cache(cfg, B, S) -> the empty KV cache for B sequences of S slots (prefill and decoding).
    ignorable_hf_key(cfg, key): checkpoint tensors loading may skip (no place in the model).
    """

    name: str
    model_types: tuple[str, ...]
    model_cls: Callable[..., nnx.Module]
    config_from_hf: Callable[..., Any]
    config_to_hf: Callable[[Any], dict[str, Any]]
    key_table: Callable[[Any], dict[str, tuple[str, Callable, Callable]]]
    init_cache: Callable[[Any, int, int], Any]
    ignorable_hf_key: Callable[[Any, str], bool] = lambda cfg, key: False


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family` the reader of its model_types; a model_type already claimed by another family fails."""
    for mt in family.model_types:
        if mt in _REGISTRY and _REGISTRY[mt] is not family:
            raise ValueError(f"model_type {mt!r} already belongs to family {_REGISTRY[mt].name!r}")
    _REGISTRY.update(dict.fromkeys(family.model_types, family))
    return family


def unregister(family: Family) -> None:
    """Forget `family` (tests register toy families and remove them again)."""
    for mt in family.model_types:
        if _REGISTRY.get(mt) is family:
            del _REGISTRY[mt]


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def for_model_type(model_type: str) -> Family:
    """The family that reads `model_type`; ValueError naming it and the supported ones otherwise."""
    if model_type not in _REGISTRY:
        raise ValueError(f"model_type {model_type!r} is not supported (have {supported_model_types()})")
    return _REGISTRY[model_type]


def for_hf_config(hf: dict[str, Any]) -> Family:
    """The family of an HF config.json dict (no `model_type`: Llama, as transformers' old exports)."""
    return for_model_type(hf.get("model_type") or DEFAULT_MODEL_TYPE)


def config_from_hf(hf: dict[str, Any], **runtime: Any) -> Any:
    """Our config object for an HF config.json dict, through its family."""
    return for_hf_config(hf).config_from_hf(hf, **runtime)


def for_config(cfg: Any) -> Family:
    """The family a config (hence a model, `model.cfg`) belongs to, from its `model_type`."""
    return for_model_type(cfg.model_type)


def build(cfg: Any, rngs: nnx.Rngs) -> nnx.Module:
    """The model of `cfg`'s family (wrap in nnx.eval_shape for an abstract one)."""
    return for_config(cfg).model_cls(cfg, rngs=rngs)


def init_cache(cfg: Any, B: int, S: int) -> Any:
    """The empty KV cache of `cfg`'s family for B sequences of S slots."""
    return for_config(cfg).init_cache(cfg, B, S)


LLAMA = register(
    Family(
        name="llama",
        model_types=SUPPORTED_MODEL_TYPES,  # llama, mistral, qwen2: one decoder, flags in LlamaConfig
        model_cls=llama.Llama,
        config_from_hf=LlamaConfig.from_hf_dict,
        config_to_hf=LlamaConfig.to_hf_dict,
        key_table=llama_params.key_table,
        init_cache=llama.init_cache,
        ignorable_hf_key=llama_params.ignorable_hf_key,
    )
)
