"""Orbax checkpoints of the whole train state (params, optimizer, dual λ, ε, rng, step) plus JSON
metadata (config, data cursor). All Orbax calls live here. Restores onto any mesh: the abstract target
carries the shardings wanted now, not the ones saved. Work dirs may be local or gs:// paths.

A failed write (disk full, quota, permissions) ends the run with one `CheckpointWriteError` naming the
step, the cause and the last complete checkpoint. Orbax writes each step into a temporary directory and
renames it (or marks it committed) only when complete, and deletes old steps only after that, so the
earlier checkpoints stay intact and a rerun resumes from them; the temporary leftovers of the failed step
are removed when the next run opens the directory. With async saves the failure surfaces at the next
save or at `finish`, and is reported there. The Orbax/TensorStore threads of a failed write log the same
error dozens of times (and print "Event loop is closed" from callbacks into their closed event loops):
those echoes are filtered out, the exception itself is reported once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import sys
import weakref

import jax
import orbax.checkpoint as ocp

from cel_jax.errors import UserError  # the command line prints it as one `error: ...` line


class CheckpointWriteError(UserError):
    """A checkpoint could not be written; the message says why, which checkpoint is intact, what to do."""


def _path(workdir: str):
    """<workdir>/ckpt; a local workdir is made absolute (newer Orbax rejects relative paths)."""
    import os

    from etils import epath

    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir)) / "ckpt"


def manager(workdir: str, every: int, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
    _filter_write_failure_echoes()
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=max(1, int(every)),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,  # a failed write's partial step (disk space) goes at the next start
    )
    mgr = ocp.CheckpointManager(_path(workdir), options=opts)
    _EVERY[mgr] = max(1, int(every))
    return mgr


_EVERY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # manager -> its save interval
_IN_FLIGHT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # manager -> step of its last save


def due(mgr: ocp.CheckpointManager, step: int) -> bool:
    """Whether `save` writes at this step without force: a multiple of the interval."""
    return step % _EVERY.get(mgr, 1) == 0 and mgr.should_save(step)


def save(mgr: ocp.CheckpointManager, step: int, state, meta: dict, force: bool = False) -> bool:
    """Save at multiples of the interval (or when forced). Orbax alone would also save the first step of
    a run with no checkpoint yet: a full copy of the state written for nothing a few seconds in."""
    if not force and not due(mgr, step):
        return False
    _settle(mgr)  # an earlier async save that failed is reported with its own step
    with _reported(mgr, step):
        saved = mgr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )
    if saved:
        _IN_FLIGHT[mgr] = step
    return saved


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
    _settle(mgr)
    mgr.close()


# --------------------------------------------------------------------------------------- work dir
def finalized_steps(workdir: str) -> list[int]:
    """The complete checkpoints' steps in <workdir>/ckpt (no manager, nothing created)."""
    return sorted(ocp.path.step.checkpoint_steps(_path(workdir)))


def saved_config(workdir: str) -> dict | None:
    """The config stored in the latest complete checkpoint's metadata, or None."""
    import json

    paths = ocp.path.step.checkpoint_steps_paths(_path(workdir))
    if not paths:
        return None
    latest = max(paths, key=lambda p: ocp.path.step.step_from_checkpoint_name(p.name))
    try:
        return json.loads((latest / "meta" / "metadata").read_text()).get("config")
    except (OSError, ValueError):
        return None


def remove_all(workdir: str) -> None:
    """Delete <workdir>/ckpt (every checkpoint)."""
    path = _path(workdir)
    if path.exists():
        path.rmtree()


def barrier(name: str) -> None:
    """Wait for every process (no-op with one)."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name)


# --------------------------------------------------------------------------------------- failed writes
def _settle(mgr: ocp.CheckpointManager) -> None:
    """Wait for the manager's async save in flight; its failure becomes a CheckpointWriteError."""
    step = _IN_FLIGHT.pop(mgr, None)
    if step is not None:
        with _reported(mgr, step):
            mgr.wait_until_finished()


@contextlib.contextmanager
def _reported(mgr: ocp.CheckpointManager, step: int):
    try:
        yield
    except Exception as e:
        cause = write_failure(e)
        if cause is None:
            raise
        with contextlib.suppress(Exception):  # stop the manager's threads; the failure is reported below
            mgr.close()
        done = [s for s in ocp.path.step.checkpoint_steps(mgr.directory) if s < step]
        kept = (
            f"the previous checkpoint (step {max(done)}) is intact"
            if done
            else "there is no earlier checkpoint (a rerun starts from the beginning)"
        )
        todo = "free space" if "space" in cause or "quota" in cause else "fix the cause"
        raise CheckpointWriteError(
            f"checkpoint write at step {step} failed: {cause} ({mgr.directory}); {kept}; "
            f"{todo} and rerun the same command to resume"
        ) from e


_STATUS = re.compile(r"^(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|DEADLINE_EXCEEDED): ")
# a TensorStore status error about a file inside a step still being written
_TMP_WRITE = re.compile(r"^[A-Z_]+: .*\.orbax-checkpoint-tmp", re.DOTALL)


def write_failure(exc: BaseException) -> str | None:
    """A short cause when `exc` (or what it was raised from) is a storage failure, else None.

    Storage failures: OSError (ENOSPC, EDQUOT, EACCES, ...) and TensorStore's status errors, which Orbax
    raises as ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        if code == errno.ENOSPC or "No space left on device" in text or "os_error_code='28'" in text:
            return "no space left on device"
        if code == errno.EDQUOT or "Disk quota exceeded" in text or "os_error_code='122'" in text:
            return "disk quota exceeded"
        if isinstance(exc, OSError):
            return (exc.strerror or text or type(exc).__name__).lower()
        if _STATUS.match(text):
            return text.splitlines()[0][:300]
        exc = exc.__cause__ or exc.__context__
    return None


def _is_echo(exc: BaseException | None) -> bool:
    """An echo of a failed write: the failure itself, a callback into Orbax's closed event loop, or a
    sibling write into the abandoned step's temporary folder (TensorStore's NOT_FOUND once the manager
    has removed it). Each of these also reaches the manager's own future, which `_reported` raises once."""
    if exc is None:
        return False
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    if _TMP_WRITE.match(str(exc)):
        return True
    return write_failure(exc) is not None


class _EchoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_echo(record.exc_info[1]))


def _filter_write_failure_echoes() -> None:
    """Drop the log records (absl: Orbax; asyncio: abandoned tasks) and unraisable-exception reports
    that only repeat a failed write; the failure itself is raised once as a CheckpointWriteError."""
    for name in ("absl", "asyncio"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _EchoFilter) for f in log.filters):
            log.addFilter(_EchoFilter())
    if not getattr(sys.unraisablehook, "_cel_jax_echo_filter", False):
        previous = sys.unraisablehook

        def hook(u, previous=previous, is_echo=_is_echo):
            if not is_echo(u.exc_value):
                previous(u)

        hook._cel_jax_echo_filter = True
        sys.unraisablehook = hook
