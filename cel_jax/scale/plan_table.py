"""`cel-jax plan`: the per-device memory table of a config's model, mesh, batch and method
(the estimates themselves are plan.py's)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cel_jax.scale.plan import GIB, HBM_GIB, REMAT_ALIASES, SWEEP_DEVICES, USABLE_HBM, estimate, model_config
from cel_jax.scale.sharding import fill_mesh_shape

NAME_W = 24  # width of the row-name column of the table
ROWS = (
    ("params", "params"),
    ("optimizer", "optimizer state"),
    ("gradients", "gradients"),
    ("grad_accum_buffer", "grad accumulator"),
    ("reference", "reference model"),
    ("reference_outputs", "reference outputs"),
    ("activations", "activations (est.)"),
    ("total", "total / device"),
)


def format_table(plans: Sequence[dict[str, Any] | None], labels: Sequence[str]) -> str:
    """Rows = memory components per device, columns = candidate meshes; units follow the largest total."""
    biggest = max([p["total"] for p in plans if p] or [0])
    unit, div = next(
        (u, d) for u, d in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)) if biggest >= d or d == 1024
    )
    width = max(11, *(len(x) + 1 for x in labels))
    head = f"{unit + ' per device':<{NAME_W}}" + "".join(f"{x:>{width}}" for x in labels)
    lines = [head, "-" * len(head)]
    for key, name in ROWS:
        cells = [(f"{p[key] / div:.2f}" if p else "n/a") for p in plans]
        lines.append(f"{name:<{NAME_W}}" + "".join(f"{c:>{width}}" for c in cells))
    cells = [(f"{p['total'] * p['n_devices'] / div:.2f}" if p else "n/a") for p in plans]
    lines.append(f"{'total, all devices':<{NAME_W}}" + "".join(f"{c:>{width}}" for c in cells))
    for chip, gib in HBM_GIB.items():
        cells = [("-" if not p else "yes" if p["total"] <= USABLE_HBM * gib * GIB else "no") for p in plans]
        lines.append(
            f"{'fits ' + chip + f' ({gib} GiB)':<{NAME_W}}" + "".join(f"{c:>{width}}" for c in cells)
        )
    return "\n".join(lines)


def _get(cfg, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part] if part in node else None
        except TypeError:
            node = getattr(node, part, None)
        if node is None:
            return default
    return node


def _method_of(config):
    """The config's method record as the engine resolves it (methods.resolve_method); None for
    fine-tuning configs. `method` may be a name or {name, retain_loss}; `method_args.retain_loss` wins."""
    m = _get(config, "method")
    if m is None or isinstance(m, str):
        name, retain = m or None, "default"
    else:
        name, retain = _get(m, "name"), _get(m, "retain_loss", "default")
    retain = _get(config, "method_args.retain_loss", retain)
    if name is None:
        return None
    from cel_jax.unlearning import methods

    over = {} if retain == "default" else {"retain_loss": retain}
    return methods.resolve_method(name, over, solver=_get(config, "solver", "scalarized"))


def _optimizer_of(config):
    """The engine's optimizer for config.optim (exact state layout), else plain AdamW."""
    opt_cfg = _get(config, "optim")
    if opt_cfg is None:
        return "adamw", "adamw"
    try:
        from cel_jax.training import optim
    except ImportError:  # pragma: no cover - planner used without the training engine
        return "adamw", "adamw"
    return optim.make_optimizer(
        opt_cfg, total_steps=1000, warmup_steps=10
    ), "config.optim (cel_jax.training.optim)"


def plan_command(config, flags) -> int:
    """Print the per-device memory table for the config's model, mesh, batch and method."""
    name = _get(config, "model.name_or_path")
    if not name:
        raise ValueError("`cel-jax plan` needs config.model.name_or_path (a local HF folder or a preset)")
    runtime = dict(
        param_dtype=_get(config, "model.param_dtype", "float32"),
        dtype=_get(config, "model.dtype", "bfloat16"),
        remat=REMAT_ALIASES.get(_get(config, "model.remat", "none"), _get(config, "model.remat", "none")),
    )
    cfg = model_config(name, **runtime)
    batch = int(_get(config, "batch_size", 1))
    seq_len = int(_get(config, "max_length") or _get(config, "data.max_length", 512))
    grad_accum = int(_get(config, "grad_accum", 1))
    method = _method_of(config)
    tx, tx_name = _optimizer_of(config)
    shape = tuple(int(s) for s in _get(config, "mesh.shape", (1, -1, 1)))
    if -1 in shape:
        counts = [n for n in SWEEP_DEVICES if n % math.prod(s for s in shape if s != -1) == 0]
        meshes = [fill_mesh_shape(shape, n) for n in counts]
    else:
        meshes = [shape]
    what = method.name if method else "none (finetune)"
    print(
        f"cel-jax plan: {name} ({cfg.num_params / 1e9:.2f} B params), method {what}, "
        f"micro-batch {batch} x {seq_len} tokens, grad_accum {grad_accum}\n"
        f"params {cfg.param_dtype}, compute {cfg.dtype}, remat {cfg.remat}, optimizer {tx_name}"
    )
    plans = []
    for m in meshes:
        try:
            plans.append(
                estimate(
                    cfg,
                    m,
                    batch,
                    seq_len,
                    optimizer=tx,
                    grad_accum=grad_accum,
                    method=method,
                )
            )
        except ValueError as e:  # e.g. batch not divisible by data*fsdp on this mesh
            if len(meshes) == 1:
                raise
            print(f"mesh {m}: {e}")
            plans.append(None)
    p0 = next((p for p in plans if p), None)
    if p0:
        print(
            f"forward passes inside the gradient: {p0['streams']}; reference model: {p0['needs_reference']}"
        )
    keep = [i for i, p in enumerate(plans) if p is not None]
    if not keep:
        raise ValueError(f"no device count in {SWEEP_DEVICES} can split batch_size={batch} over mesh {shape}")
    print(format_table([plans[i] for i in keep], [f"{meshes[i]}" for i in keep]))
    print(
        "Exact: params, optimizer, gradients, reference (sharding rules of scale.sharding). Estimated: "
        "activations (cel_jax.scale.plan.activation_bytes). 'fits' keeps 10% of HBM free."
    )
    return 0
