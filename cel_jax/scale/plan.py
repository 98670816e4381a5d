"""Memory planner (`cel-jax plan`): bytes per device of a training run, before paying for the machines.

Axes: B global batch (sequences per forward pass, all devices), b = B / (data*fsdp) per device,
T sequence length, D model, N q-heads, K kv-heads, H head_dim, F mlp, V vocab, L layers.

Exact parts: parameters, optimizer state, gradients and the frozen reference model are computed leaf by leaf
from the model's own parameter list (`nnx.eval_shape`, no weights) and the sharding rules of
`scale.sharding` (`logical_to_spec`: an axis stays replicated when the mesh axis does not divide it), so
they equal what the sharded arrays occupy (tests/test_plan.py checks this on 8 fake devices). The optimizer
state is assumed sharded like the parameters, its scalars replicated: what an eager `tx.init(params)` on
sharded params gives (cel_jax.training.engine), or `jax.jit(tx.init, out_shardings=...)` with shardings from
`optax.tree_map_params`; a bare `jax.jit(tx.init)` would replicate everything.

Estimated part: activations (see `activation_bytes`), and XLA's temporary buffers are not modelled
beyond one recomputed layer. Treat activations as an order of magnitude and keep ~10-15% HBM headroom.
What a method adds (forward streams, reference model and outputs) is read from its resolved record
(`methods.Method`). Model configs without download: presets.py; the command's table: plan_table.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from cel_jax.model.config import LlamaConfig
from cel_jax.scale.presets import PRESETS, hf_config_dict, model_config  # noqa: F401  (public names)
from cel_jax.scale.sharding import MESH_AXES, RULES, logical_to_spec

GIB = 1024**3
REMAT_ALIASES = {"nothing_saveable": "full", "minimal": "full", "": "none", None: "none"}
OPTIMIZERS = ("adamw", "adam", "sgd", "none")
# HBM per chip (GiB), for the "fits on" line. v4/v5p count one chip (two TensorCores as one JAX device).
HBM_GIB = {"v5e": 16, "v4": 32, "v6e": 32, "v5p": 95, "A100-40G": 40, "H100-80G": 80, "H200": 141}
USABLE_HBM = 0.9  # fraction left to our buffers after the runtime, XLA scratch and fragmentation
SWEEP_DEVICES = (4, 8, 16, 32, 64, 128)


# ------------------------------------------------------------------------------------------ model
_LEAVES_CACHE: dict[str, list] = {}


def param_leaves(cfg: LlamaConfig) -> list[tuple[tuple, tuple[int, ...], np.dtype, tuple | None]]:
    """(path, shape, dtype, logical axes) of every parameter, from the abstract model (no memory)."""
    from cel_jax.model import families

    key = repr(cfg.replace(remat="none", dtype="float32"))  # neither changes the parameters
    if key not in _LEAVES_CACHE:
        abstract = nnx.eval_shape(lambda: families.build(cfg, nnx.Rngs(0)))
        out = []
        for path, var in nnx.iter_graph(abstract):
            if isinstance(var, nnx.Param):
                axes = var.get_metadata().get("logical_axes")
                out.append((tuple(path), tuple(var.shape), np.dtype(var.dtype), axes))
        _LEAVES_CACHE[key] = out
    return _LEAVES_CACHE[key]


# ------------------------------------------------------------------------------------------- mesh
def abstract_mesh(mesh_shape: Sequence[int]) -> jax.sharding.AbstractMesh:
    shape = tuple(int(s) for s in mesh_shape)
    if len(shape) != len(MESH_AXES) or min(shape) < 1:
        raise ValueError(
            f"mesh shape {tuple(mesh_shape)} must be {len(MESH_AXES)} positive sizes {MESH_AXES}"
        )
    return jax.sharding.AbstractMesh(shape, MESH_AXES)


def shard_shape(shape: Sequence[int], spec, mesh) -> tuple[int, ...]:
    """Per-device block shape of an array with PartitionSpec `spec` on `mesh` (sizes divide exactly)."""
    out = []
    for i, size in enumerate(shape):
        entry = spec[i] if i < len(spec) else None
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        out.append(size // math.prod(mesh.shape[n] for n in names))
    return tuple(out)


def _sharded_params(cfg: LlamaConfig, mesh_shape: Sequence[int], rules=RULES):
    """(nested dict of ShapeDtypeStructs like `nnx.to_pure_dict`, {keystr: (shape, elems/device, dtype)})."""
    mesh = abstract_mesh(mesh_shape)
    tree: dict = {}
    blocks = {}
    for path, shape, dtype, axes in param_leaves(cfg):
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = jax.ShapeDtypeStruct(shape, dtype)
        block = shard_shape(shape, logical_to_spec(axes, shape, mesh, rules), mesh)
        blocks["".join(f"[{k!r}]" for k in path)] = (shape, math.prod(block), dtype)
    return tree, blocks


def param_bytes_per_device(cfg: LlamaConfig, mesh_shape: Sequence[int], dtype=None, rules=RULES) -> int:
    """Exact bytes one device holds for a parameter-shaped tree (params, grads, a frozen copy)."""
    _, blocks = _sharded_params(cfg, mesh_shape, rules)
    return sum(n * np.dtype(dtype or dt).itemsize for _, n, dt in blocks.values())


def make_optimizer(optimizer) -> optax.GradientTransformation | None:
    """An optax transformation from a name ("adamw", "adam", "sgd", "none") or a transformation itself."""
    if optimizer is None or optimizer == "none":
        return None
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {OPTIMIZERS} or an optax transformation")
    return {"adamw": optax.adamw, "adam": optax.adam, "sgd": optax.sgd}[optimizer](1e-3)


def optimizer_bytes_per_device(
    cfg: LlamaConfig, mesh_shape: Sequence[int], optimizer="adamw", rules=RULES
) -> int:
    """Exact bytes per device of `tx.init(params)`: parameter-shaped leaves (found by their path, e.g.
    `[1][0].mu['embed']`) sharded like their parameter, everything else (counts) replicated."""
    tx = make_optimizer(optimizer)
    if tx is None:
        return 0
    tree, blocks = _sharded_params(cfg, mesh_shape, rules)
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.eval_shape(tx.init, tree)):
        ks = jax.tree_util.keystr(path)
        hit = next((blocks[ks[i:]] for i, ch in enumerate(ks) if ch == "[" and ks[i:] in blocks), None)
        elems = hit[1] if hit is not None and hit[0] == tuple(leaf.shape) else math.prod(leaf.shape)
        total += elems * np.dtype(leaf.dtype).itemsize
    return total


def _div(size: int, n: int) -> int:
    """Shard count actually used for a dimension: n when it divides `size`, else 1 (replicated)."""
    return n if n > 1 and size % n == 0 else 1


# ------------------------------------------------------------------------------------ activations
def activation_bytes(
    cfg: LlamaConfig,
    mesh_shape: Sequence[int],
    batch: int,
    seq_len: int,
    remat: str = "none",
    streams: int = 1,
) -> dict[str, int]:
    """Estimated activation bytes per device for `streams` forward passes inside one `value_and_grad`.

    Per decoder layer and per device (n = b*T tokens, s = compute-dtype bytes, tp = tensor size when it
    divides the dimension), the tensors a backward pass needs:
      resid   n*D*4                 layer input (float32 residual stream)
      norms   2*n*D*(4+s)           two RMSNorm outputs (float32) and their casts
      qkv     n*(N+2K)*H*s/tp       projections (dot, no batch dims)
      rope    n*(N+K)*H*s/tp        rotated q and k
      scores  b*N*T*T*4/tp          attention logits (dot with batch dims, float32)
      probs   b*N*T*T*(4+s)/tp      softmax in float32 and its cast
      attn    n*N*H*s/tp            probs @ v (dot with batch dims)
      o       n*D*(s+4)             output projection (dot, no batch dims) and the residual sum
      gate_up 2*n*F*s/tp            gate and up projections (dots, no batch dims)
      swiglu  2*n*F*s/tp            silu(gate) and silu(gate)*up
      down    n*D*(s+4)             down projection (dot, no batch dims) and the residual sum
    What each remat policy keeps for every layer:
      none                              everything above
      dots_saveable                     resid + qkv + scores + attn + gate_up + the dot part of o, down
      dots_with_no_batch_dims_saveable  resid + qkv + gate_up + the dot part of o, down
      full (nothing_saveable)           resid
    plus, with remat, one layer's full set while it is recomputed in the backward pass. Outside the
    layers each stream keeps the embedding output (n*D*4), the final norm (n*D*(4+s)) and float32 logits
    with one logits-sized temporary for the softmax and its gradient (2*n*V*4/tp).
    With fsdp > 1 add the gathered weights: max(3 layers' worth (current and prefetched layer weights,
    one layer's unreduced gradient), the gathered embedding or LM head), in the parameter dtype / tp.
    """
    remat = REMAT_ALIASES.get(remat, remat)
    if remat not in ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"):
        raise ValueError(f"unknown remat policy {remat!r}")
    data, fsdp, tensor = (int(s) for s in mesh_shape)
    if batch % (data * fsdp):
        raise ValueError(
            f"batch {batch} is not divisible by data*fsdp = {data * fsdp} (mesh {tuple(mesh_shape)})"
        )
    b, T = batch // (data * fsdp), seq_len
    n, s = b * T, np.dtype(cfg.dtype).itemsize
    D, N, K, H, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    tN, tK, tF, tV = _div(N, tensor), _div(K, tensor), _div(F, tensor), _div(V, tensor)
    t = dict(
        resid=n * D * 4,
        norms=2 * n * D * (4 + s),
        qkv=n * N * H * s // tN + 2 * n * K * H * s // tK,
        rope=n * N * H * s // tN + n * K * H * s // tK,
        scores=b * N * T * T * 4 // tN,
        probs=b * N * T * T * (4 + s) // tN,
        attn=n * N * H * s // tN,
        o=n * D * (s + 4),
        gate_up=2 * n * F * s // tF,
        swiglu=2 * n * F * s // tF,
        down=n * D * (s + 4),
    )
    full_layer = sum(t.values())
    dots_nb = t["resid"] + t["qkv"] + t["gate_up"] + 2 * n * D * s
    kept = {
        "none": full_layer,
        "dots_saveable": dots_nb + t["scores"] + t["attn"],
        "dots_with_no_batch_dims_saveable": dots_nb,
        "full": t["resid"],
    }[remat]
    outside = n * D * 4 + n * D * (4 + s) + 2 * n * V * 4 // tV
    layers = streams * cfg.n_layers * kept
    recompute = 0 if remat == "none" else full_layer
    p = np.dtype(cfg.param_dtype).itemsize
    layer_w = (D * H * N * 2 // tN + D * H * K * 2 // tK + 3 * D * F // tF) * p
    gather = max(3 * layer_w, V * D * p // tV) if fsdp > 1 else 0
    return dict(
        layers=layers,
        recompute=recompute,
        outside=streams * outside,
        gather=gather,
        total=layers + recompute + streams * outside + gather,
        local_batch=b,
    )


# ------------------------------------------------------------------------------------------- plan
def method_needs(method, retain_loss: str | None = "default") -> dict[str, Any]:
    """Forward streams inside the gradient, and reference-model needs, of an unlearning method: its
    resolved record (`methods.Method`, what the engine runs), or a name with its defaults and
    `retain_loss`; None for fine-tuning."""
    if method is None:
        return dict(streams=1, reference=False, ref_logits=0, ref_hidden=0)
    if isinstance(method, str):
        from cel_jax.unlearning import methods

        method = methods.resolve_method(
            method, {} if retain_loss == "default" else {"retain_loss": retain_loss}
        )
    ref = method.reference
    return dict(
        streams=method.streams,
        reference=bool(ref),
        ref_logits=len(ref & {"ref_forget_logits", "ref_retain_logits"}),
        ref_hidden=int("ref_retain_hidden" in ref),
    )


def estimate(
    model_cfg: LlamaConfig,
    mesh_shape: Sequence[int],
    batch: int,
    seq_len: int,
    param_dtype: str | None = None,
    dtype: str | None = None,
    optimizer: str | optax.GradientTransformation = "adamw",
    remat: str | None = None,
    grad_accum: int = 1,
    method=None,
    retain_loss: str | None = "default",
    reference_dtype: str | None = None,
) -> dict[str, Any]:
    """Bytes per device of one training step on a concrete mesh (data, fsdp, tensor).

    `batch` is the global micro-batch (sequences per forward pass, summed over devices). Rows: params,
    optimizer (`optimizer_bytes_per_device`: for AdamW mu + nu in the parameter dtype + int32 counts; pass
    the training's own optax transformation to match it exactly), gradients (parameter dtype),
    grad_accum_buffer (one parameter-shaped buffer when grad_accum > 1), reference (frozen reference
    model, sharded like the parameters, when `method` needs one), reference_outputs (reference logits or
    hidden states kept for the loss), activations (`activation_bytes`), total.
    """
    tx = make_optimizer(optimizer)
    if int(grad_accum) < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    if int(batch) < 1 or int(seq_len) < 1:
        raise ValueError(f"batch and seq_len must be positive, got batch={batch} seq_len={seq_len}")
    if any(int(s) == -1 for s in mesh_shape):
        raise ValueError(f"mesh shape {tuple(mesh_shape)} has -1: give concrete sizes to estimate()")
    rt = {k: v for k, v in dict(param_dtype=param_dtype, dtype=dtype, remat=remat).items() if v is not None}
    if "remat" in rt:
        rt["remat"] = REMAT_ALIASES.get(rt["remat"], rt["remat"])
    cfg = model_cfg.replace(**rt)
    mesh_shape = tuple(int(s) for s in mesh_shape)
    need = method_needs(method, retain_loss)
    p = param_bytes_per_device(cfg, mesh_shape)
    opt = optimizer_bytes_per_device(cfg, mesh_shape, tx) if tx is not None else 0
    train = tx is not None
    act = activation_bytes(cfg, mesh_shape, batch, seq_len, cfg.remat, need["streams"])
    data, fsdp, tensor = mesh_shape
    n_tok = act["local_batch"] * seq_len
    ref_out = n_tok * 4 * (need["ref_logits"] * cfg.vocab_size // _div(cfg.vocab_size, tensor))
    ref_out += n_tok * 4 * need["ref_hidden"] * cfg.d_model
    rows = dict(
        params=p,
        optimizer=opt,
        gradients=p if train else 0,
        grad_accum_buffer=p if train and grad_accum > 1 else 0,
        reference=param_bytes_per_device(cfg, mesh_shape, reference_dtype) if need["reference"] else 0,
        reference_outputs=ref_out,
        activations=act["total"],
    )
    rows["total"] = sum(rows.values())
    n_dev = math.prod(mesh_shape)
    return dict(
        rows,
        n_devices=n_dev,
        mesh_shape=mesh_shape,
        local_batch=act["local_batch"],
        n_params=cfg.num_params,
        activation_detail=act,
        streams=need["streams"],
        needs_reference=need["reference"],
        remat=cfg.remat,
        param_dtype=cfg.param_dtype,
        dtype=cfg.dtype,
    )


def suggest_mesh(
    model_cfg: LlamaConfig,
    n_devices: int,
    batch: int,
    seq_len: int,
    hbm_bytes: float,
    devices_per_host: int = 4,
    **kw: Any,
) -> tuple[int, int, int] | None:
    """Smallest tensor-parallel degree (<= devices_per_host) whose plan fits `hbm_bytes`; fsdp gets the rest.

    FSDP over every chip first: it shards params and optimizer state with one all-gather per layer and
    keeps every chip busy on its own sequences. Tensor parallelism only when the batch is too small to
    give each chip a sequence, or activations do not fit, and only within a host (its all-reduces run
    every layer, on the fastest links).
    """
    t = 1
    while t <= min(devices_per_host, n_devices):
        if n_devices % t == 0 and batch % (n_devices // t) == 0:
            shape = (1, n_devices // t, t)
            if estimate(model_cfg, shape, batch, seq_len, **kw)["total"] <= USABLE_HBM * hbm_bytes:
                return shape
        t *= 2
    return None
