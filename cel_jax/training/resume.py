"""Start or resume a run's train state, and save it as the loop goes (Orbax, via checkpoint.py).

The checkpoint holds the whole train state plus the data cursor and ε: a rerun of the same config
resumes where the last complete checkpoint left off, on any mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cel_jax import data
from cel_jax.scale import hostmem
from cel_jax.training import checkpoint, retain_eval


def start_or_resume(job, params):
    """(state, cursor, ε): the latest checkpoint's, else a fresh state on the engine's shardings with
    ε measured now (retain_eval.initial_eps)."""
    eng = job.eng
    state = eng.initial_state(params)
    restored = checkpoint.restore_latest(job.mgr, state)
    if restored is not None:
        state, meta = restored
        cursor = data.Cursor(*meta["cursor"])
        print(f"resumed from step {int(state.step)} (epoch {cursor.epoch}, position {cursor.position})")
        return state, cursor, float(meta["eps"])
    eps = retain_eval.initial_eps(job.cfg, job.mode, params, eng.graphdef, job.td, job.mesh)
    state = state.replace(eps=jax.device_put(jnp.float32(eps), eng.replicated))
    return state, data.Cursor(0, 0), eps


def release_before_save(state) -> None:
    """The step's temporaries (~1.2 GB for 135M parameters) are freed once it has run; their pages go
    back to the OS before the checkpoint's serialisation buffers are allocated on top."""
    jax.block_until_ready(state)
    hostmem.release()


def save(job, state, step: int, meta: dict, log_path, first: bool) -> None:
    """Save when the interval says so; the log (already flushed by the loop) follows a remote save."""
    if checkpoint.due(job.mgr, step):
        release_before_save(state)
    saved = checkpoint.save(job.mgr, step, state, meta)
    if saved or first:  # the save's (and a first run's one-off) freed pages go back
        hostmem.release()
    if saved:
        job.mirror.upload_file(log_path)


def save_final(job, state, meta: dict) -> None:
    """The end state, unless the last save already holds it or `ckpt.save_final` is off; then wait for
    async saves to land."""
    if job.cfg.ckpt.get("save_final", True) and job.mgr.latest_step() != int(state.step):
        release_before_save(state)
        checkpoint.save(job.mgr, int(state.step), state, meta, force=True)
    checkpoint.finish(job.mgr)
