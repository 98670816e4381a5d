"""Orbax checkpoints of the whole train state (params, optimizer, dual λ, ε, rng, step) plus JSON
metadata (config, data cursor). All Orbax calls live here. Restores onto any mesh: the abstract target
carries the shardings wanted now, not the ones saved. Work dirs may be local or gs:// paths."""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp


def _path(workdir: str):
    """<workdir>/ckpt; a local workdir is made absolute (newer Orbax rejects relative paths)."""
    import os

    from etils import epath

    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir)) / "ckpt"


def manager(workdir: str, every: int, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, int(every)), enable_async_checkpointing=async_save
    )
    return ocp.CheckpointManager(_path(workdir), options=opts)


def save(mgr: ocp.CheckpointManager, step: int, state, meta: dict, force: bool = False) -> bool:
    return mgr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force,
    )


def abstract_like(state):
    """ShapeDtypeStructs with the shardings of `state` (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def restore_latest(mgr: ocp.CheckpointManager, target_state):
    """(state, meta) of the latest checkpoint restored into `target_state`'s shapes/shardings, or None."""
    step = mgr.latest_step()
    if step is None:
        return None
    out = mgr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(target_state)), meta=ocp.args.JsonRestore()
        ),
    )
    return out.state, out.meta


def finish(mgr: ocp.CheckpointManager) -> None:
    mgr.wait_until_finished()
    mgr.close()
