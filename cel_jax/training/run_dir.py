"""A work dir remembers its run: WORKDIR/run_config.json holds the mode and the full config, written
(atomically) before the model is loaded. A rerun into the same dir is checked against it before anything
is loaded or compiled, so a different job never silently resumes another run's checkpoint or overwrites
its exported model.

`cfg.resume` says what a rerun may do:
  "auto"     (default) the same config resumes the latest checkpoint; a different config is refused
             with the differing keys (old → new);
  "force"    resume the latest checkpoint under the new config (run_config.json is updated, the previous
             one kept as run_config.prev.json);
  "restart"  delete the checkpoints of an earlier run with a different config and start from scratch.
             Refused while WORKDIR/model (what that run exported) exists: move or delete it first.
             Rerunning the same restart command (a requeued job) resumes the restarted run instead of
             starting over again: a run with the recorded config is never discarded.

A finished run keeps its exported model and summary.json and drops its checkpoint (unless
`ckpt.keep_final`): rerunning it with the same config prints that it is done and changes nothing.
Always refused: a dir holding an exported model and no checkpoint to resume under another config (a new
run would overwrite that model). A dir without a checkpoint or exported model has nothing to protect: any
config starts there.

Keys that do not change what is computed are not compared (IGNORED): `max_steps` (continuing a run that
stopped at max_steps is the point of resuming), `ckpt.*`, `export`, `eval.*`, `report.*`,
`show_examples`, `resume`, `mesh.*` (a checkpoint restores onto any mesh), `distributed.*`,
`model.remat` and `lm_head_rows` (same values, other memory/speed).

Work dirs before this file existed: the config stored in the latest checkpoint's metadata stands in.
Remote (gs://) work dirs are read and written through etils.epath, like the checkpoints.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from cel_jax.errors import UserError  # a ValueError the command line prints as one `error:` line
from cel_jax.training import checkpoint

RECORD, PREVIOUS = "run_config.json", "run_config.prev.json"
RESUME = ("auto", "force", "restart")
IGNORED = (
    "max_steps",
    "ckpt",
    "export",
    "eval",
    "report",
    "show_examples",
    "resume",
    "mesh",
    "distributed",
    "model.remat",
    "lm_head_rows",
)


class Plan(NamedTuple):
    """What `run` does in the work dir: "new" (start from scratch), "resume" (same config), "force"
    (resume under a changed config), "restart" (checkpoints of a different run deleted first) or "done"
    (the same config already finished here: summary.json and the exported model, its checkpoint dropped)."""

    action: str
    diffs: list  # [(key, old, new)] of the compared keys that differ from the recorded run
    step: int | None  # the latest complete checkpoint


def _root(workdir: str):
    from etils import epath

    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))


def snapshot(cfg, mode: str) -> dict:
    """{"mode", "config"} as JSON values (tuples become lists, as they are read back)."""
    return json.loads(json.dumps({"mode": mode, "config": cfg.to_dict()}, default=str))


def load(workdir: str) -> dict | None:
    """The recorded run (`snapshot` of its config), or None."""
    f = _root(workdir) / RECORD
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise UserError(f"{f} is not valid JSON ({e}); delete it to treat the work dir as unrecorded") from e


def record(workdir: str, cfg, mode: str, keep_previous: bool = False) -> None:
    """Write run_config.json (tmp file + rename; a gs:// object write is atomic by itself)."""
    root = _root(workdir)
    root.mkdir(parents=True, exist_ok=True)
    f, text = root / RECORD, json.dumps(snapshot(cfg, mode), indent=2) + "\n"
    if keep_previous and f.exists():
        (root / PREVIOUS).write_text(f.read_text())
    if "://" in str(workdir):
        f.write_text(text)
        return
    tmp = f.with_name(f"{RECORD}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, f)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED)


_ABSENT = object()


def compare(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """[(key, old, new)] of the keys of two snapshots that differ, IGNORED keys left out; "mode" is
    compared when both hold it (the metadata of checkpoints written before run_config.json does not)."""
    a, b = _flat(old.get("config") or {}), _flat(new.get("config") or {})
    if "mode" in old and "mode" in new:
        a["mode"], b["mode"] = old["mode"], new["mode"]
    keys = sorted(k for k in a.keys() | b.keys() if not _ignored(k))
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def describe(diffs, limit: int = 12) -> str:
    """The differences as "key old → new, ..." on one line."""

    def show(v):
        return "(absent)" if v is _ABSENT else json.dumps(v)

    parts = [f"{k} {show(a)} → {show(b)}" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more (see {RECORD})")
    return ", ".join(parts)


def _has_model(workdir: str) -> bool:
    model = _root(workdir) / "model"
    return model.is_dir() and any(True for _ in model.iterdir())


def check(workdir: str, cfg, mode: str) -> Plan:
    """What a run of `cfg` may do in `workdir` (reads only); UserError when it must not run there."""
    how = cfg.get("resume", "auto")
    if how not in RESUME:
        raise UserError(f"resume must be one of {RESUME}, got {how!r}")
    steps = checkpoint.finalized_steps(workdir)
    step = steps[-1] if steps else None
    old = load(workdir)
    if old is None and step is not None:
        saved = checkpoint.saved_config(workdir)
        old = {"config": saved} if saved is not None else None
    diffs = compare(old, snapshot(cfg, mode)) if old is not None else []
    model = _has_model(workdir)
    model_dir = _root(workdir) / "model"
    if step is None:
        if model and old is not None and not diffs and (_root(workdir) / "summary.json").exists():
            return Plan("done", [], None)
        if model:
            raise UserError(
                f"work dir {workdir} holds an exported model ({model_dir}) and no checkpoint to resume: "
                f"a run here would start from scratch and overwrite it; choose a new --workdir, or move or "
                f"delete {model_dir} first"
            )
        return Plan("new", diffs, None)
    if not diffs:
        return Plan("resume", [], step)
    if how == "force":
        return Plan("force", diffs, step)
    if how == "restart":
        if model:
            raise UserError(
                f"resume=restart would discard the run in {workdir} (checkpoint at step {step}) whose "
                f"exported model is {model_dir}: move or delete that folder first, or choose a new --workdir"
            )
        return Plan("restart", diffs, step)
    after = f" (after moving {model_dir} away)" if model else ""
    raise UserError(
        f"work dir {workdir} holds a run with another config (checkpoint at step {step}): {describe(diffs)}; "
        f"choose a new --workdir, or pass --config.resume=force to continue that checkpoint under the new "
        f"config, or --config.resume=restart to start over in this dir{after}"
    )


def prepare(workdir: str, cfg, mode: str) -> Plan:
    """`check`, then (process 0) delete the checkpoints of a restart and record the config."""
    import jax

    plan = check(workdir, cfg, mode)
    checkpoint.barrier("cel_jax_run_dir_checked")  # every process has read the dir before it changes
    if jax.process_index() == 0:
        if plan.action == "restart":
            checkpoint.remove_all(workdir)
            print(
                f"resume=restart: deleted the earlier run's checkpoints (up to step {plan.step}) in {workdir}"
            )
        elif plan.action == "force":
            print(f"resume=force: continuing step {plan.step} under a changed config: {describe(plan.diffs)}")
        if plan.action != "done":
            record(workdir, cfg, mode, keep_previous=bool(plan.diffs))
    checkpoint.barrier("cel_jax_run_dir_prepared")
    return plan
