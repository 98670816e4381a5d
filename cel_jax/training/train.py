"""The unlearning / fine-tuning loop: validate, prepare data, build the sharded state, run jitted steps,
log, checkpoint (Orbax, resumable), export the final model as an HF folder.

Axes: M micro-batches per optimizer step, B micro-batch size (global), T length.
Only process 0 writes logs, plots and exports; every process builds the same global batch order and
feeds its own slice (`host_slice`) into global arrays.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cel_jax import data
from cel_jax.data.train_data import TrainData, prepare_data
from cel_jax.evaluation import before_after
from cel_jax.scale import aot, hostmem, sharding
from cel_jax.training import checkpoint, optim, run_dir, target
from cel_jax.unlearning import answer_rows, methods
from cel_jax.unlearning import dual as dual_lib
from cel_jax.unlearning import step as step_lib

SOLVERS = ("primal_dual", "scalarized")
LM_HEAD_ROWS = ("answers", "all")  # LM head on answer-predicting rows only (answer_rows.py) | every row
_FAULT_AT_STEP = int(os.environ.get("CEL_JAX_FAULT_AT_STEP", "0"))  # tests: SIGKILL after this step


# --------------------------------------------------------------------------------------- validation
def validate_config(cfg, mode: str) -> None:
    """Cheap checks before anything is loaded or compiled."""
    if mode == "unlearn":
        methods.get_method(cfg.method)  # unknown method -> ValueError with the valid names
        if cfg.solver not in SOLVERS:
            raise ValueError(f"unknown solver {cfg.solver!r}; expected one of {SOLVERS}")
        dual_lib.reject_dual_method_args(_method_overrides(cfg))
        methods.resolve_hparams(cfg.method, _method_overrides(cfg))
        if cfg.solver == "primal_dual":
            dual_lib.validate(cfg.dual)
            if cfg.dual.eps is None and cfg.dual.eps_alpha is None:
                raise ValueError("primal_dual needs dual.eps (absolute) or dual.eps_alpha (relative)")
    if cfg.get("lm_head_rows", "answers") not in LM_HEAD_ROWS:
        raise ValueError(f"lm_head_rows must be one of {LM_HEAD_ROWS}, got {cfg.lm_head_rows!r}")
    for key in ("batch_size", "grad_accum", "epochs"):
        if not int(cfg[key]) >= 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    if not cfg.optim.lr > 0 or not math.isfinite(cfg.optim.lr):
        raise ValueError(f"optim.lr must be a positive number, got {cfg.optim.lr}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {cfg.max_steps}")
    data_par = np.prod(sharding.fill_mesh_shape(cfg.mesh.shape, jax.device_count())[:2])
    if cfg.batch_size % data_par:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be a multiple of the mesh's data x fsdp size "
            f"{data_par} (mesh.shape={tuple(cfg.mesh.shape)} on {jax.device_count()} devices)"
        )


def _method_overrides(cfg) -> dict:
    return dict(cfg.method_args.to_dict()) if cfg.get("method_args") is not None else {}


def make_spec(cfg, model_cfg, mode: str) -> step_lib.StepSpec:
    if mode == "finetune":
        return step_lib.StepSpec(
            method="finetune", solver="finetune", dual_mode="fixed", retain_kind=None, forget_hp=()
        )
    spec = methods.get_method(cfg.method)
    hp = methods.resolve_hparams(cfg.method, _method_overrides(cfg))
    retain_kind = hp.get("retain_loss", spec.retain_loss)
    if cfg.solver == "primal_dual" and retain_kind is None:
        retain_kind = "nll"  # constrained version of a forget-only loss: bound the retain NLL
    layer = None
    if spec.needs_hidden_layer is not None:
        layer = int(hp.get("layer", spec.needs_hidden_layer))
        if not 0 <= layer < model_cfg.n_layers:
            raise ValueError(f"{cfg.method}: layer {layer} outside the model's {model_cfg.n_layers} layers")
    forget_hp = tuple(sorted((k, hp[k]) for k in spec.forget_args))
    primal_dual = cfg.solver == "primal_dual"
    return step_lib.StepSpec(
        method=cfg.method,
        solver=cfg.solver,
        dual_mode=cfg.dual.mode if primal_dual else "fixed",
        dual_rule=dual_lib.rule_from_config(cfg.dual) if primal_dual else dual_lib.Rule(),
        retain_kind=retain_kind,
        forget_hp=forget_hp,
        gamma=float(hp.get("gamma", 1.0)),
        alpha=float(hp.get("alpha", 1.0)),
        hidden_layer=layer,
        compat=bool(cfg.compat),
    )


def answer_row_parts(cfg, spec: step_lib.StepSpec) -> set[str]:
    """Batch parts whose LM head may run on answer rows only (answer_rows.py); none with
    `lm_head_rows="all"`."""
    if cfg.get("lm_head_rows", "answers") == "all":
        return set()
    if spec.solver == "finetune":
        return {"forget"}
    return answer_rows.eligible_parts(
        methods.get_method(spec.method), dict(spec.forget_hp), spec.retain_kind, spec.compat
    )


def answer_row_plan(cfg, spec: step_lib.StepSpec, td: TrainData) -> tuple[tuple[str, int], ...]:
    """((part, capacity), ...) from every sequence the run can draw (one compiled shape per part)."""
    items = {
        "forget": td.forget_items,
        "retain": td.retain_items,
        "idk": [it for variant in td.idk_items for it in variant],
    }
    labels = {p: (it["labels"] for it in its) for p, its in items.items()}
    return answer_rows.plan(answer_row_parts(cfg, spec), labels)


# --------------------------------------------------------------------------------------- state
def create_state(
    params, tx, lam0: float, eps: float, seed: int, rule: dual_lib.Rule | None = None, forget_scale=1.0
) -> step_lib.TrainState:
    """forget_scale 0: set at the first step to 1 / L_f of its first micro-batch (dual.normalize_forget)."""
    return step_lib.TrainState(
        step=jnp.int32(0),
        params=params,
        opt_state=tx.init(params),
        dual=dual_lib.init(rule or dual_lib.Rule(), lam0),
        eps=jnp.float32(eps),
        forget_scale=jnp.float32(forget_scale),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def _release_before_save(state) -> None:
    """The step's temporaries (~1.2 GB for 135M parameters) are freed once it has run; their pages go
    back to the OS before the checkpoint's serialisation buffers are allocated on top."""
    jax.block_until_ready(state)
    hostmem.release()


def _run_batches(td: TrainData, cfg, total_steps: int):
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


# --------------------------------------------------------------------------------------- logging
class MetricsLog:
    """metrics.jsonl (one line per optimizer step), process 0 only; truncated to the resume step."""

    def __init__(self, workdir: Path, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        if self.enabled and self.path.exists():
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= resume_step
            ]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(k + "\n" for k in keep))
            os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _to_py(x):
    x = np.asarray(x)
    return x.tolist() if x.ndim else float(x)


# --------------------------------------------------------------------------------------- main loop
def run(cfg, workdir: str, mode: str = "unlearn") -> dict:
    """Run (or resume) an unlearning/fine-tuning job in `workdir`; returns a summary dict."""
    from cel_jax.model import hf_io

    _maybe_initialize_distributed(cfg)
    validate_config(cfg, mode)
    if not workdir:
        raise ValueError("--workdir is required")
    plan = run_dir.prepare(str(workdir), cfg, mode)  # another config's run is refused, not resumed
    if plan.action == "done":
        from etils import epath

        summary = json.loads((epath.Path(workdir) / "summary.json").read_text())
        return {"summary": summary, "model": None, "tokenizer": None, "report": None, "done": True}
    remote = _is_remote(workdir)  # gs:// etc.: files are written to a local mirror, then uploaded
    wd = Path(tempfile.mkdtemp(prefix="cel_jax_")) if remote else Path(workdir)
    if remote:
        _download(workdir, wd, ["metrics.jsonl"])
    if jax.process_index() == 0:
        wd.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(cfg.mesh.shape)

    folder = hf_io.resolve(target.ensure_target(cfg) if mode == "unlearn" else cfg.model.name_or_path)
    model_cfg = hf_io.read_config(
        folder, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat
    )
    tok = hf_io.load_tokenizer(folder)
    if len(tok) > model_cfg.vocab_size:
        raise ValueError(
            f"tokenizer of {folder} has {len(tok)} tokens; model vocabulary is {model_cfg.vocab_size}"
        )
    spec = make_spec(cfg, model_cfg, mode)
    td: TrainData = prepare_data(
        cfg, tok, mode, needs_idk=mode == "unlearn" and methods.get_method(cfg.method).needs_idk
    )  # all data errors surface here, before the model is loaded
    spec = spec.replace(answer_rows=answer_row_plan(cfg, spec, td))

    steps_per_epoch = td.steps_per_epoch(cfg.batch_size, cfg.grad_accum)  # one pass = one epoch
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))
    warmup_steps = int(cfg.optim.warmup_epochs * steps_per_epoch)
    tx = optim.make_optimizer(cfg.optim, steps_per_epoch * cfg.epochs, warmup_steps)
    lr_at = optim.lr_schedule(
        cfg.optim.lr, steps_per_epoch * cfg.epochs, warmup_steps, cfg.optim.get("schedule", "linear")
    )

    mgr = checkpoint.manager(str(workdir), cfg.ckpt.every, cfg.ckpt.keep, cfg.ckpt.get("async_save", True))
    primal_dual = mode == "unlearn" and cfg.solver == "primal_dual"
    lam0 = cfg.dual.lam0 if primal_dual else 0.0
    normalize = primal_dual and bool(cfg.dual.get("normalize_forget", False))

    def make_state(params):
        return create_state(params, tx, lam0, 0.0, cfg.seed, spec.dual_rule, 0.0 if normalize else 1.0)

    model, _ = hf_io.load_pretrained(
        str(folder),
        dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype,
        remat=cfg.model.remat,
        mesh=mesh,
        with_tokenizer=False,
    )
    # The step is compiled for every batch shape of the run before the optimizer state exists: the
    # compile's transient memory does not sit on top of the state and the step's temporaries (aot.py).
    graphdef, params_state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params_state)
    abs_params = aot.abstract_like(params)
    abs_state = jax.eval_shape(make_state, abs_params)
    state_shd = aot.state_shardings(abs_state, abs_params, tx, mesh)
    rep = sharding.replicated(mesh)
    consts = {}
    if spec.method == "rmu":
        coeff = methods.resolve_hparams("rmu", _method_overrides(cfg))["steering_coeff"]
        consts["control_vec"] = jax.device_put(
            methods.rmu_control_vector(jax.random.key(cfg.seed + 17), model_cfg.d_model, coeff), rep
        )
    needs_ref = bool(step_lib.needed_reference(spec))
    fn = jax.jit(
        lambda s, b, hp, r, c: step_lib.train_step(s, b, hp, r, c, graphdef=graphdef, tx=tx, spec=spec),
        donate_argnums=0,
        out_shardings=(state_shd, rep),
    )
    programs = aot.Programs(
        fn, aot.with_shardings(abs_state, state_shd), abs_params if needs_ref else None, consts
    )
    hp_of = lambda active: {"dual_active": jax.device_put(jnp.bool_(active), rep)}  # noqa: E731
    shapes = set()
    for batch in _run_batches(td, cfg, total_steps):  # host batches: only a new shape is placed and compiled
        if (key := aot.shape_key(batch)) not in shapes:
            shapes.add(key)
            programs.compile(to_global(batch, mesh), hp_of(False))
    hostmem.release()  # the compiler's pages go back before the optimizer state arrives

    report_cfg = cfg.get("report") or {}
    show = (
        mode == "unlearn" and report_cfg.get("enabled", False) and jax.process_index() == 0 and td.retain_rows
    )
    before = before_after.snapshot(model, tok, td, report_cfg) if show else None
    # the frozen reference is its own copy: the train state (and so `params`) is donated every step
    ref_params = jax.tree.map(jnp.copy, params) if needs_ref else None
    state = aot.place(make_state(params), state_shd)
    restored = checkpoint.restore_latest(mgr, state)
    if restored is not None:
        state, meta = restored
        cursor = data.Cursor(*meta["cursor"])
        eps = float(meta["eps"])
        print(f"resumed from step {int(state.step)} (epoch {cursor.epoch}, position {cursor.position})")
    else:
        cursor = data.Cursor(0, 0)
        eps = _initial_eps(cfg, mode, spec, params, graphdef, td, mesh)
        state = state.replace(eps=jax.device_put(jnp.float32(eps), rep))
    meta_base = {"config": cfg.to_dict(), "eps": eps}
    log = MetricsLog(wd, int(state.step))

    from tqdm import tqdm

    start_step = int(state.step)
    bar = tqdm(
        total=total_steps, initial=start_step, disable=jax.process_index() != 0, desc=mode, dynamic_ncols=True
    )
    pending = None
    hostmem.release()  # the answers' KV caches and the ε pass are freed: pages go back before the steps
    t0 = time.time()
    step_i = start_step  # host copy of state.step (+1 per call): reading the device's would sync every step
    while step_i < total_steps:
        epoch_before = cursor.epoch
        batch, cursor_after = td.next_batch(cursor, cfg.batch_size, cfg.grad_accum)
        for part, cap in spec.answer_rows:
            answer_rows.check_capacity(batch[part]["labels"], cap, part)
        active = (mode == "unlearn") and (cursor.epoch >= cfg.dual.warmup_epochs)
        state, metrics = programs(state, to_global(batch, mesh), hp_of(active), ref_params, consts)
        if pending is not None:  # log the previous step now: no host sync right after dispatch
            _emit(log, bar, pending, eps)
        bucket = int(batch["forget"]["input_ids"].shape[-1])
        pending = (step_i, cursor.epoch, float(lr_at(step_i)), metrics, bool(active), bucket)
        cursor = cursor_after
        if (
            spec.dual_mode == "epoch"
            and cursor.epoch > epoch_before
            and cursor.epoch >= cfg.dual.warmup_epochs
        ):
            mean_lr = _retain_pass(state.params, graphdef, td, cfg, mesh, epoch_before)
            new = dual_lib.update(
                spec.dual_rule, state.dual, dual_lib.violation(spec.dual_rule, mean_lr, eps)
            )
            state = state.replace(dual=jax.device_put(new, rep))
        step_i += 1  # = state.step after this call (train_step adds 1)
        if checkpoint.due(mgr, step_i):
            if pending is not None:
                _emit(log, bar, pending, eps)  # the log must hold every step the checkpoint holds
                pending = None
            _release_before_save(state)
        saved = checkpoint.save(mgr, step_i, state, {**meta_base, "cursor": list(cursor)})
        if saved or step_i == start_step + 1:  # the save's (and a first run's one-off) freed pages go back
            hostmem.release()
        if saved and remote and jax.process_index() == 0 and log.path.exists():
            _upload_file(log.path, workdir)
        if _FAULT_AT_STEP and step_i == _FAULT_AT_STEP:  # test hook: die like a preempted job
            os.kill(os.getpid(), signal.SIGKILL)
    if pending is not None:
        _emit(log, bar, pending, eps)
    bar.close()
    if mgr.latest_step() != int(state.step):
        _release_before_save(state)
        checkpoint.save(mgr, int(state.step), state, {**meta_base, "cursor": list(cursor)}, force=True)
    checkpoint.finish(mgr)
    wall = time.time() - t0

    final = nnx.merge(graphdef, state.params)
    finished = int(state.step) >= steps_per_epoch * cfg.epochs  # not cut short by max_steps
    summary = {
        "mode": mode,
        "method": cfg.method if mode == "unlearn" else "finetune",
        "solver": cfg.solver if mode == "unlearn" else "finetune",
        "dual_rule": spec.dual_rule.name if spec.solver == "primal_dual" else None,
        "steps": int(state.step),
        "epochs": cursor.epoch if cursor.position == 0 else cursor.epoch + 1,
        "dual": float(state.dual.lam),
        "eps": eps,
        "forget_scale": float(state.forget_scale),
        "wall_s": wall,
        "resumed_from": start_step,
        "lm_head_rows": {p: c for p, c in spec.answer_rows} or "all",  # rows kept per sequence, per part
    }
    final_params = state.params  # the same arrays as `final`'s
    state = ref_params = consts = None  # only the weights are needed from here: optimizer state freed
    hostmem.release()
    if mode == "unlearn" and eps > 0 and log.path.exists():
        from cel_jax.training import feasibility

        rows = [json.loads(ln) for ln in log.path.read_text().splitlines() if ln.strip()]
        lr_final = _reference_retain_loss(cfg, final_params, graphdef, td, mesh)  # ε's rows, final weights
        tol = float(cfg.dual.get("tolerance", 0.0) or 0.0)
        summary.update(feasibility.report(rows, eps, tol, final_model_retain_loss=lr_final))
    report = None
    if before is not None:
        after = before_after.snapshot(final, tok, td, report_cfg)
        summary.update(before_after.summary_fields(before, after))
        report = before_after.render(td, before, after, summary, report_cfg)
    if cfg.get("export", True):
        hf_io.save_pretrained(final, tok, wd / "model")  # all processes gather; process 0 writes
    if jax.process_index() == 0:
        from cel_jax.training import plots

        plots.training_curves(wd / "metrics.jsonl", wd / "training_curves.png")
        _write_json(wd / "summary.json", summary)
        if remote:
            _upload(wd, workdir)
    if finished and cfg.get("export", True) and not cfg.ckpt.get("keep_final", False):
        checkpoint.barrier("cel_jax_finished")
        if jax.process_index() == 0:  # finished and exported: the optimizer state is not needed to resume
            checkpoint.remove_all(str(workdir))
    return {"summary": summary, "model": final, "tokenizer": tok, "data": td, "report": report}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _is_remote(workdir) -> bool:
    return "://" in str(workdir)


def _download(remote_dir, local: Path, names) -> None:
    from etils import epath

    for n in names:
        src = epath.Path(remote_dir) / n
        if src.exists():
            (local / n).write_bytes(src.read_bytes())


def _upload_file(f: Path, remote_dir) -> None:
    from etils import epath

    (epath.Path(remote_dir) / f.name).write_bytes(f.read_bytes())


def _upload(local: Path, remote_dir) -> None:
    """Copy the local mirror's files (metrics, plots, summary, exported model) to the remote work dir."""
    from etils import epath

    for f in local.rglob("*"):
        if f.is_file():
            dst = epath.Path(remote_dir) / f.relative_to(local).as_posix()
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())


def _maybe_initialize_distributed(cfg) -> None:
    try:
        from cel_jax.scale import distributed
    except ImportError:  # pragma: no cover - single-host installs without the module
        return
    if distributed.resolve(cfg.get("distributed")) is not None:
        # CPU-only clusters and localhost tests need a CPU collectives backend (GPU/TPU ignore this).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    distributed.maybe_initialize(cfg.get("distributed"))


def _emit(log: MetricsLog, bar, pending, eps: float) -> None:
    step_i, epoch, lr, m, active, bucket = pending
    m = jax.device_get(m)
    row = {"step": step_i + 1, "epoch": epoch, "lr": lr, "eps": eps, "dual_active": active, "seq_len": bucket}
    row.update({k: _to_py(v) for k, v in m.items()})
    log.write(row)
    bar.update(1)
    if math.isnan(row["retain_loss"]):  # fine-tuning: one loss, no constraint
        bar.set_postfix(loss=f"{row['forget_loss']:.4g}")
        return
    bar.set_postfix(
        forget=f"{row['forget_loss']:.4g}",
        retain_minus_eps=f"{row['retain_loss'] - eps:+.3g}" if eps > 0 else "n/a",
        lam=f"{row['dual']:.4g}",
    )


@functools.lru_cache(maxsize=4)
def _retain_nll_fn(graphdef):
    """One jitted retain forward per model structure: ε's reference pass, every epoch-mode pass and the
    final model's check reuse its compiled programs instead of tracing a new function each time."""
    return jax.jit(lambda p, part: step_lib.retain_nll_sums(p, part, graphdef))


def _token_mean_over(params, graphdef, batches, mesh) -> float:
    f = _retain_nll_fn(graphdef)
    tot, n = 0.0, 0
    for b in batches:
        b = jax.tree.map(lambda x: x[None], b)
        s, c = f(params, jax.tree.map(lambda x: x[0], to_global(b, mesh)))
        tot, n = tot + float(s), n + int(c)
    if n == 0:
        raise ValueError("the retain set has no answer tokens")
    return tot / n


def _reference_retain_loss(cfg, params, graphdef, td: TrainData, mesh) -> float:
    """L_r of `params` on the rows ε is measured on (the retain set, or its first dual.eps_ref_items)."""
    return _token_mean_over(params, graphdef, td.retain_batches(cfg.batch_size, cfg.dual.eps_ref_items), mesh)


def retain_losses(cfg, model_dir: str, epoch: int) -> dict:
    """An unlearning config's retain losses for the weights in `model_dir` (a finished run's export, or
    its target): `eps_rows`, on the rows ε is measured on; `partners`, on the retain partners of `epoch`
    (the rows whose training losses that epoch's feasibility mean averages)."""
    from cel_jax.model import hf_io

    mesh = sharding.make_mesh(cfg.mesh.shape)
    model, tok = hf_io.load_pretrained(
        str(model_dir), dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, mesh=mesh
    )
    td = prepare_data(cfg, tok, "unlearn")
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    return {
        "eps_rows": _reference_retain_loss(cfg, params, graphdef, td, mesh),
        "partners": _retain_pass(params, graphdef, td, cfg, mesh, epoch),
    }


def _initial_eps(cfg, mode, spec, params, graphdef, td: TrainData, mesh) -> float:
    """ε of the run (stored in the checkpoint). Scalarised runs that name one get it too, so their
    feasibility report is against the same bound as a constrained run's; 0 means none."""
    if mode != "unlearn" or (cfg.dual.eps is None and cfg.dual.eps_alpha is None):
        return 0.0
    if cfg.dual.eps is not None:
        return float(cfg.dual.eps)
    ref_loss = _reference_retain_loss(cfg, params, graphdef, td, mesh)
    eps = dual_lib.eps_from_reference(ref_loss, cfg.dual.eps_alpha)
    print(
        f"eps = (1 + {cfg.dual.eps_alpha}) * L_r(pi_ref) = (1 + {cfg.dual.eps_alpha}) * {ref_loss:.4f}"
        f" = {eps:.4f}"
    )
    return eps


def _retain_pass(params, graphdef, td: TrainData, cfg, mesh, epoch: int) -> float:
    """Epoch mode: mean retain loss over the retain partners of one pass (no gradient)."""
    return _token_mean_over(params, graphdef, td.partner_batches(epoch, cfg.batch_size), mesh)


# --------------------------------------------------------------------------------------- commands
def unlearn_command(config, flags) -> int:
    out = run(config, flags.workdir, "unlearn")
    _after(config, flags.workdir, out)
    return 0


def finetune_command(config, flags) -> int:
    out = run(config, flags.workdir, "finetune")
    _after(config, flags.workdir, out)
    return 0


def _after(cfg, workdir, out) -> None:
    if jax.process_index() != 0:
        return
    s = out["summary"]
    if out.get("done"):
        print(f"done already: this config finished in {workdir} (summary.json, model/); nothing to run")
        if "constraint_satisfied" in s:
            from cel_jax.training import feasibility

            print(feasibility.line(s))
        return
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
        from cel_jax.training import feasibility

        print(feasibility.line(s))
