"""The unlearning / fine-tuning loop: validate, prepare data, build the engine (engine.py) and compile its
step ahead of time, run the jitted steps, log, checkpoint (Orbax, resumable), export the final model as
an HF folder (outcome.py).

Axes: M micro-batches per optimizer step, B micro-batch size (global), T length.
Only process 0 writes logs, plots and exports; every process builds the same global batch order and
feeds its own slice into global arrays (batches.to_global).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax

from cel_jax.data.train_data import TrainData, prepare_data
from cel_jax.scale import aot, hostmem, sharding
from cel_jax.training import (
    batches,
    checkpoint,
    checks,
    engine,
    outcome,
    resume,
    retain_eval,
    run_dir,
    target,
)
from cel_jax.training.metrics_log import MetricsLog, emit
from cel_jax.training.mirror import Mirror
from cel_jax.unlearning import answer_rows
from cel_jax.unlearning import dual as dual_lib

_FAULT_AT_STEP = int(os.environ.get("CEL_JAX_FAULT_AT_STEP", "0"))  # tests: SIGKILL after this step


@dataclasses.dataclass(frozen=True)
class Job:
    """What a run is set up with (everything but the weights and the train state)."""

    cfg: Any
    mode: str
    mirror: Mirror
    mesh: Any
    tok: Any
    td: TrainData
    counts: batches.StepCounts
    mgr: Any  # the Orbax checkpoint manager
    eng: engine.Engine


def run(cfg, workdir: str, mode: str = "unlearn") -> dict:
    """Run (or resume) an unlearning/fine-tuning job in `workdir`; returns a summary dict."""
    from cel_jax.model import hf_io

    _maybe_initialize_distributed(cfg)
    checks.validate_config(cfg, mode)
    if not workdir:
        raise ValueError("--workdir is required")
    if run_dir.prepare(str(workdir), cfg, mode).action == "done":  # another config's run is refused
        return outcome.already_done(workdir)
    mirror, mesh = Mirror.open(workdir), sharding.make_mesh(cfg.mesh.shape)
    folder = hf_io.resolve(target.ensure_target(cfg, run) if mode == "unlearn" else cfg.model.name_or_path)
    model_cfg = hf_io.read_config(
        folder, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat
    )
    tok = hf_io.load_tokenizer(folder)
    if len(tok) > model_cfg.vocab_size:
        raise ValueError(
            f"tokenizer of {folder} has {len(tok)} tokens; model vocabulary is {model_cfg.vocab_size}"
        )
    spec = engine.make_spec(cfg, model_cfg, mode)  # the method, resolved once
    td = prepare_data(cfg, tok, mode, needs_idk=spec.resolved.needs_idk)  # data errors before the model loads
    counts = batches.step_counts(cfg, td)
    mgr = checkpoint.manager(str(workdir), cfg.ckpt.every, cfg.ckpt.keep, cfg.ckpt.get("async_save", True))
    model, _ = hf_io.load_pretrained(
        str(folder),
        dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype,
        remat=cfg.model.remat,
        mesh=mesh,
        with_tokenizer=False,
    )
    graphdef, params = engine.split(model)
    eng = engine.build(cfg, model_cfg, graphdef, params, mode, spec=spec, td=td, mesh=mesh)
    job = Job(cfg, mode, mirror, mesh, tok, td, counts, mgr, eng)
    _compile_ahead(job)
    before = outcome.before_snapshot(job, model)
    ref_params = eng.reference(params)
    state, cursor, eps = resume.start_or_resume(job, params)
    start_step = int(state.step)
    log = MetricsLog(mirror.local, start_step)
    hostmem.release()  # the answers' KV caches and the ε pass are freed: pages go back before the steps
    t0 = time.time()
    state, cursor = _train(job, state, cursor, eps, ref_params, log)
    summary = outcome.summary(job, state, cursor, eps, time.time() - t0, start_step)
    final_params = state.params
    state = ref_params = params = None  # only the weights are needed from here: optimizer state freed
    hostmem.release()
    return outcome.finish(job, final_params, summary, before, log.path)


def _compile_ahead(job: Job) -> None:
    """Compile the step for every batch shape of the run before the optimizer state exists: the
    compile's transient memory does not sit on top of the state and the step's temporaries (aot.py)."""
    shapes = set()
    for batch in batches.run_batches(job.td, job.cfg, job.counts.run):  # only a new shape is placed
        if (key := aot.shape_key(batch)) not in shapes:
            shapes.add(key)
            job.eng.programs.compile(batches.to_global(batch, job.mesh), job.eng.hp(False))
    hostmem.release()  # the compiler's pages go back before the optimizer state arrives


def _train(job: Job, state, cursor, eps: float, ref_params, log: MetricsLog):
    """The step loop from `state` to the run's last step; (final state, data cursor)."""
    from tqdm import tqdm

    cfg, eng, td = job.cfg, job.eng, job.td
    meta = {"config": cfg.to_dict(), "eps": eps}
    start_step = step_i = int(state.step)  # host copy of state.step: reading the device's would sync
    bar = tqdm(
        total=job.counts.run,
        initial=start_step,
        disable=jax.process_index() != 0,
        desc=job.mode,
        dynamic_ncols=True,
    )
    pending = None  # the previous step's row: logged after the next step is dispatched
    while step_i < job.counts.run:
        batch, after = td.next_batch(cursor, cfg.batch_size, cfg.grad_accum)
        for part, cap in eng.spec.answer_rows:
            answer_rows.check_capacity(batch[part]["labels"], cap, part)
        active = job.mode == "unlearn" and cursor.epoch >= cfg.dual.warmup_epochs
        state, metrics = eng.programs(
            state, batches.to_global(batch, job.mesh), eng.hp(active), ref_params, eng.consts
        )
        if pending is not None:
            emit(log, bar, pending, eps)
        bucket = int(batch["forget"]["input_ids"].shape[-1])
        pending = (step_i, cursor.epoch, float(eng.lr_at(step_i)), metrics, bool(active), bucket)
        if after.epoch > cursor.epoch and after.epoch >= cfg.dual.warmup_epochs:
            state = _end_of_epoch(job, state, cursor.epoch, eps)
        cursor, step_i = after, step_i + 1  # step_i = state.step after this call (train_step adds 1)
        if checkpoint.due(job.mgr, step_i) and pending is not None:
            emit(log, bar, pending, eps)  # the log must hold every step the checkpoint holds
            pending = None
        resume.save(job, state, step_i, {**meta, "cursor": list(cursor)}, log.path, step_i == start_step + 1)
        if _FAULT_AT_STEP and step_i == _FAULT_AT_STEP:  # test hook: die like a preempted job
            os.kill(os.getpid(), signal.SIGKILL)
    if pending is not None:
        emit(log, bar, pending, eps)
    bar.close()
    resume.save_final(job, state, {**meta, "cursor": list(cursor)})
    return state, cursor


def _end_of_epoch(job: Job, state, epoch: int, eps: float):
    """The "epoch" dual mode's step (dual.advance), on a full pass over the epoch's retain partners."""
    spec = job.eng.spec
    if spec.dual_mode != "epoch":
        return state
    mean_lr = retain_eval.retain_pass(state.params, job.eng.graphdef, job.td, job.cfg, job.mesh, epoch)
    new = dual_lib.advance(spec.dual_rule, spec.dual_mode, "epoch", state.dual, mean_lr, eps)
    return state.replace(dual=jax.device_put(new, job.eng.replicated))


def _maybe_initialize_distributed(cfg) -> None:
    try:
        from cel_jax.scale import distributed
    except ImportError:  # pragma: no cover - single-host installs without the module
        return
    if distributed.resolve(cfg.get("distributed")) is not None:
        # CPU-only clusters and localhost tests need a CPU collectives backend (GPU/TPU ignore this).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    distributed.maybe_initialize(cfg.get("distributed"))


# --------------------------------------------------------------------------------------- commands
def unlearn_command(config, flags) -> int:
    _after(config, flags.workdir, run(config, flags.workdir, "unlearn"))
    return 0


def finetune_command(config, flags) -> int:
    _after(config, flags.workdir, run(config, flags.workdir, "finetune"))
    return 0


def _after(cfg, workdir, out) -> None:
    if jax.process_index() != 0:
        return
    from cel_jax.training import feasibility

    s = out["summary"]
    if out.get("done"):
        print(f"done already: this config finished in {workdir} (summary.json, model/); nothing to run")
    else:
        where = f"; model exported to {Path(workdir) / 'model'}" if cfg.get("export", True) else ""
        print(f"done: {s['steps']} steps in {s['wall_s']:.0f}s{where}")
        if out.get("report"):
            print(out["report"])
        if cfg.get("eval") is not None and cfg.eval.get("enabled", False):
            from cel_jax.evaluation import driver

            driver.evaluate(
                cfg.eval.benchmark,
                out["model"],
                out["tokenizer"],
                cfg.eval.overrides.to_dict(),
                Path(workdir) / "eval",
                model_name=str(Path(workdir) / "model"),
            )
    if "constraint_satisfied" in s:
        print(feasibility.line(s))
