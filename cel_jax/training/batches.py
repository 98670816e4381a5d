"""The run's batch schedule and its placement on the mesh.

Axes: M micro-batches per optimizer step, B micro-batch size (global), T length.
Every process builds the same global batch order and feeds its own slice of the batch axis into global
arrays (`to_global`).
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cel_jax import data
from cel_jax.data.train_data import TrainData
from cel_jax.scale import sharding


@dataclasses.dataclass(frozen=True)
class StepCounts:
    per_epoch: int  # optimizer steps of one pass over the forget set
    schedule: int  # steps the lr schedule spans (every epoch, whatever max_steps cuts)
    warmup: int  # lr warmup steps
    run: int  # steps this run takes (max_steps may cut it short)


def step_counts(cfg, td: TrainData) -> StepCounts:
    per_epoch = td.steps_per_epoch(cfg.batch_size, cfg.grad_accum)  # one pass = one epoch
    schedule = per_epoch * cfg.epochs
    run = min(schedule, int(cfg.max_steps)) if cfg.max_steps else schedule
    return StepCounts(per_epoch, schedule, int(cfg.optim.warmup_epochs * per_epoch), run)


def run_batches(td: TrainData, cfg, total_steps: int):
    """Every host batch of a run from its start, in order (the loop's schedule, for compiling ahead)."""
    cursor = data.Cursor(0, 0)
    for _ in range(total_steps):
        batch, cursor = td.next_batch(cursor, cfg.batch_size, cfg.grad_accum)
        yield batch


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(None, ("data", "fsdp")))  # [M, B, ...]: B over data x fsdp


def to_global(batch: dict, mesh) -> dict:
    """Host batch (same on every process) -> global arrays sharded over the batch axis."""
    shd, rep = batch_sharding(mesh), sharding.replicated(mesh)
    n, i = jax.process_count(), jax.process_index()

    def put(x):
        if x.ndim < 2:  # per-micro-batch flags [M]: the same on every device
            return jax.device_put(x, rep) if n == 1 else jax.make_array_from_process_local_data(rep, x)
        if n == 1:
            return jax.device_put(x, shd)
        per = x.shape[1] // n
        local = x[:, i * per : (i + 1) * per]
        return jax.make_array_from_process_local_data(shd, local, x.shape)

    return jax.tree.map(put, batch)
