"""Hugging Face checkpoint I/O: safetensors folders <-> our NNX models, torch-free.

`load_pretrained(name_or_path)` reads a local HF folder (single or sharded safetensors + index,
config.json, tokenizer files), a hub name when the network allows, or the alias of the embedded default
model. With a mesh, every tensor goes straight into its shards (`make_array_from_callback`: each device
receives only its slice). `save_pretrained` writes the exact inverse, atomically.
The config's `model_type` picks the family (model class, config reader, parameter map) in `families`;
an unsupported one fails before any weight is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cel_jax.model import embedded, families
from cel_jax.model.files import atomic_dir


def _path_str(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


# ---------------------------------------------------------------------------------------- reading
class _TensorSource:
    """Lazy access to the tensors of one or several safetensors files (numpy, no torch)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = [p.name for p in sorted(folder.glob("*.safetensors"))]
            if not files:
                raise FileNotFoundError(
                    f"no *.safetensors in {folder} (PyTorch .bin checkpoints are not read; "
                    "convert them with transformers' save_pretrained(safe_serialization=True))"
                )
            weight_map = None
        self.handles = {f: safe_open(str(folder / f), framework="numpy") for f in files}
        self.where: dict[str, str] = {}
        for f, h in self.handles.items():
            for k in h.keys():
                self.where[k] = f
        if weight_map:
            missing = set(weight_map) - set(self.where)
            if missing:
                raise ValueError(f"index lists tensors missing from the files: {sorted(missing)[:5]}")

    def keys(self):
        return self.where.keys()

    def get(self, key: str) -> np.ndarray:
        return self.handles[self.where[key]].get_tensor(key)


def read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's config.json as a dict."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a Hugging Face model folder")
    return json.loads(path.read_text())


def read_config(folder: str | os.PathLike, **runtime):
    """Our config for an HF folder, read by the family of its `model_type` (ValueError if unsupported)."""
    return families.config_from_hf(read_hf_config(folder), **runtime)


def load_params_into(
    model_abstract: nnx.Module, folder: Path, mesh=None, rules=None, family: families.Family | None = None
) -> nnx.Module:
    """Fill an abstract (eval_shape'd) model from safetensors through `family`'s parameter map (default:
    the family of `model_abstract.cfg.model_type`); returns a concrete model."""
    from cel_jax.scale import sharding

    cfg = model_abstract.cfg
    family = family or families.for_config(cfg)
    src = _TensorSource(folder)
    table = family.key_table(cfg)
    graphdef, abstract = nnx.split(model_abstract, nnx.Param)
    shardings = (
        sharding.param_shardings(abstract, mesh, rules or sharding.RULES) if mesh is not None else None
    )
    used = set()

    def fill(path, var):
        name = _path_str(path)
        if name not in table:
            raise ValueError(f"no checkpoint mapping for parameter {name}")
        hf_key, to_ours, _ = table[name]
        if hf_key not in src.keys():
            raise ValueError(f"checkpoint in {folder} lacks tensor {hf_key} (needed for {name})")
        used.add(hf_key)
        arr = to_ours(src.get(hf_key), cfg)
        if tuple(arr.shape) != tuple(var.shape):
            raise ValueError(f"{hf_key}: shape {arr.shape} after conversion, model expects {var.shape}")
        arr = np.asarray(arr).astype(jnp.dtype(var.dtype))
        if shardings is None:
            return var.replace(jnp.asarray(arr))
        shd = _lookup(shardings, path)
        return var.replace(jax.make_array_from_callback(arr.shape, shd, lambda idx: arr[idx]))

    filled = jax.tree_util.tree_map_with_path(fill, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
    extra = [k for k in src.keys() if k not in used and not family.ignorable_hf_key(cfg, k)]
    if extra:
        raise ValueError(f"checkpoint tensors with no place in the model: {extra[:8]}")
    return nnx.merge(graphdef, filled)


def _lookup(tree, path):
    node = tree
    for k in path:
        node = node[getattr(k, "key", getattr(k, "idx", None))]
    return node


def resolve(name_or_path: str) -> Path:
    """Alias -> embedded model folder; local folder -> itself; otherwise a hub snapshot."""
    if name_or_path in embedded.ALIASES:
        return embedded.ensure_converted(name_or_path)
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{p} is a file; pass a Hugging Face model folder")
        return p
    if name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name_or_path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
            )
        )
    except Exception as e:  # offline, unknown repo, gated...
        raise RuntimeError(
            f"could not load {name_or_path!r}: not a local folder, not an alias "
            f"({', '.join(embedded.ALIASES)}), and the hub download failed: {e}"
        ) from e


def load_tokenizer(folder: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_pretrained(
    name_or_path: str,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    remat: str = "none",
    mesh=None,
    rules=None,
    with_tokenizer: bool = True,
):
    """(model, tokenizer) from an HF folder, hub name or alias; see the module docstring."""
    folder = resolve(name_or_path)
    hf = read_hf_config(folder)
    family = families.for_hf_config(hf)  # an unsupported model_type fails here, before any weight is read
    cfg = family.config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, remat=remat)
    abstract = nnx.eval_shape(lambda: family.model_cls(cfg, rngs=nnx.Rngs(0)))
    model = load_params_into(abstract, folder, mesh=mesh, rules=rules, family=family)
    tok = load_tokenizer(folder) if with_tokenizer else None
    if tok is not None and len(tok) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the model's vocabulary is {cfg.vocab_size}")
    return model, tok


# ---------------------------------------------------------------------------------------- writing
def model_to_hf_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """{hf key: array} of every parameter, through the model family's parameter map."""
    cfg = model.cfg
    table = families.for_config(cfg).key_table(cfg)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = ".".join(str(p) for p in path)
        hf_key, _, to_hf = table[name]
        x = var[...]
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # multi-host: every process joins
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
        arr = np.asarray(jax.device_get(x))
        out[hf_key] = np.ascontiguousarray(to_hf(arr, cfg))
    return out


def save_pretrained(
    model: nnx.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    max_shard_bytes: int = 4 << 30,
    generation_config: dict | None = None,
) -> Path:
    """Write an HF folder (safetensors, config, tokenizer, generation config) atomically."""
    from safetensors.numpy import save_file

    cfg = model.cfg
    tensors = model_to_hf_tensors(model)
    if jax.process_index() != 0:
        return Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for k in sorted(tensors):
            if size and size + tensors[k].nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = tensors[k]
            size += tensors[k].nbytes
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, sh in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(sh, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update({k: fname for k in sh})
            index = {
                "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                "weight_map": weight_map,
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(families.for_config(cfg).config_to_hf(cfg), indent=2))
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False}
        if cfg.pad_token_id is not None:
            gen["pad_token_id"] = cfg.pad_token_id
        gen.update(generation_config or {})
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
