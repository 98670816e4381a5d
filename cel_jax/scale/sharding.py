"""Device meshes and logical-axis sharding rules (MaxText-style, without the mega-config).

Mesh axes: ("data", "fsdp", "tensor"). Parameters carry logical axis names (`logical_axes` metadata on
each nnx.Param); RULES map those names to mesh axes. A logical axis is only sharded when the mesh axis
divides its size, otherwise it stays replicated (so tiny test models work on any mesh).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
)


def fill_mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"mesh shape {shape} does not divide {n_devices} devices")
        shape[shape.index(-1)] = n_devices // known
    if int(np.prod(shape)) > n_devices:
        raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, but {n_devices} exist")
    return tuple(shape)


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh; an explicit shape smaller than the device count uses the first ones."""
    devices = list(devices if devices is not None else jax.devices())
    full = fill_mesh_shape(shape, len(devices))
    devices = devices[: int(np.prod(full))]
    return jax.make_mesh(full, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(axes: Sequence[str | None] | None, shape: Sequence[int], mesh, rules=RULES) -> P:
    """PartitionSpec for an array with the given logical axes; indivisible or reused mesh axes -> None."""
    if axes is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        target = table.get(name) if name is not None else None
        if target is None:
            spec.append(None)
            continue
        names = (target,) if isinstance(target, str) else tuple(target)
        names = tuple(n for n in names if n not in used and mesh.shape[n] > 1)
        n_shards = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        if not names or size % n_shards:
            spec.append(None)
            continue
        used.update(names)
        spec.append(names[0] if len(names) == 1 else names)
    return P(*spec)


def param_shardings(abstract_model_or_state, mesh, rules=RULES):
    """A State of NamedShardings matching `nnx.state(model, nnx.Param)`, from each Param's logical axes."""
    state = abstract_model_or_state
    if isinstance(state, nnx.Module):
        state = nnx.state(state, nnx.Param)

    def one(var):
        axes = var.get_metadata().get("logical_axes") if isinstance(var, nnx.Variable) else None
        return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def data_sharding(mesh, ndim: int = 2) -> NamedSharding:
    """Batch axis over (data, fsdp); the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_model(model: nnx.Module, mesh, rules=RULES) -> nnx.Module:
    """Place every parameter of `model` onto its sharding (in place) and return it."""
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.device_put(params, param_shardings(params, mesh, rules)))
    return model
