"""Hugging Face checkpoint I/O: safetensors folders <-> our NNX Llama, torch-free.

`load_pretrained(name_or_path)` reads a local HF folder (single or sharded safetensors + index,
config.json, tokenizer files), a hub name when the network allows, or the alias of the embedded default
model. With a mesh, every tensor goes straight into its shards (`make_array_from_callback`: each device
receives only its slice). `save_pretrained` writes the exact inverse, atomically.
Axes: D model, N q-heads, K kv-heads, H head_dim, F mlp, V vocab.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cel_jax.model.config import LlamaConfig
from cel_jax.model.llama import Llama

Transform = Callable[[np.ndarray, LlamaConfig], np.ndarray]
IGNORED_HF_KEYS = ("rotary_emb.inv_freq",)


def _t(w, c):
    return w.T


def key_table(c: LlamaConfig) -> dict[str, tuple[str, Transform, Transform]]:
    """{our param path: (hf key, hf->ours, ours->hf)}; each pair of transforms is an exact inverse."""
    D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    ident: Transform = lambda w, c: w
    tab = {
        "embed": ("model.embed_tokens.weight", ident, ident),
        "final_norm.scale": ("model.norm.weight", ident, ident),
    }
    if not c.tie_word_embeddings:
        tab["lm_head"] = ("lm_head.weight", _t, _t)
    for i in range(c.n_layers):
        hf, us = f"model.layers.{i}.", f"layers.{i}."
        tab[us + "attn_norm.scale"] = (hf + "input_layernorm.weight", ident, ident)
        tab[us + "mlp_norm.scale"] = (hf + "post_attention_layernorm.weight", ident, ident)
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
            tab[us + "attn.o_bias"] = (hf + "self_attn.o_proj.bias", ident, ident)
        for name in ("gate", "up", "down"):
            tab[us + f"mlp.{name}"] = (hf + f"mlp.{name}_proj.weight", _t, _t)
            if c.mlp_bias:
                tab[us + f"mlp.{name}_bias"] = (hf + f"mlp.{name}_proj.bias", ident, ident)
    return tab


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


def read_config(folder: str | os.PathLike, **runtime) -> LlamaConfig:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a Hugging Face model folder")
    return LlamaConfig.from_hf_dict(json.loads(path.read_text()), **runtime)


def load_params_into(model_abstract: Llama, folder: Path, mesh=None, rules=None) -> Llama:
    """Fill an abstract (eval_shape'd) model from safetensors; returns a concrete model."""
    from cel_jax.scale import sharding

    cfg = model_abstract.cfg
    src = _TensorSource(folder)
    table = key_table(cfg)
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
    extra = [
        k
        for k in src.keys()
        if k not in used
        and not k.endswith(IGNORED_HF_KEYS)
        and not (cfg.tie_word_embeddings and k == "lm_head.weight")
    ]
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
    from cel_jax.model import embedded

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
    cfg = read_config(folder, dtype=dtype, param_dtype=param_dtype, remat=remat)
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    model = load_params_into(abstract, folder, mesh=mesh, rules=rules)
    tok = load_tokenizer(folder) if with_tokenizer else None
    if tok is not None and len(tok) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the model's vocabulary is {cfg.vocab_size}")
    return model, tok


# ---------------------------------------------------------------------------------------- writing
def model_to_hf_tensors(model: Llama) -> dict[str, np.ndarray]:
    cfg = model.cfg
    table = key_table(cfg)
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


def atomic_dir(out_dir: str | os.PathLike):
    """Context manager yielding a temp folder next to out_dir that replaces out_dir on success."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        out = Path(out_dir).expanduser().resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
        try:
            yield tmp
            if out.exists():
                old = out.with_name(f".{out.name}.old.{os.getpid()}")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    return cm()


def save_pretrained(
    model: Llama,
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
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False}
        if cfg.pad_token_id is not None:
            gen["pad_token_id"] = cfg.pad_token_id
        gen.update(generation_config or {})
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
