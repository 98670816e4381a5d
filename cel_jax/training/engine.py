"""The engine: everything the jitted train step needs, built once from a config and the model.

`make_spec` resolves the config's method once (`methods.resolve`) into the step's static spec; `build`
adds the answer-row plan, the optax chain and its lr schedule, the train-state constructor, the jitted
step (state donated; on a mesh, the state's shardings as out_shardings) with its ahead-of-time programs,
the method's constants and whether it needs a frozen reference copy of the parameters.
`train.run`, bench/throughput/jax_step.py and the tests all build their step here.

Axes: M micro-batches per optimizer step, B micro-batch size (global), T length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cel_jax.data.train_data import TrainData
from cel_jax.scale import aot, sharding
from cel_jax.training import batches, optim
from cel_jax.unlearning import answer_rows, methods
from cel_jax.unlearning import dual as dual_lib
from cel_jax.unlearning import step as step_lib


def make_spec(cfg, model_cfg, mode: str) -> step_lib.StepSpec:
    """The step's static spec: the method resolved once for the model, the dual's mode and rule."""
    resolved = methods.resolve(cfg, model_cfg.n_layers, mode)
    primal_dual = resolved.solver == "primal_dual"
    return step_lib.StepSpec(
        resolved=resolved,
        dual_mode=cfg.dual.mode if primal_dual else "fixed",
        dual_rule=dual_lib.rule_from_config(cfg.dual) if primal_dual else dual_lib.Rule(),
    )


def answer_row_parts(cfg, spec: step_lib.StepSpec) -> set[str]:
    """Batch parts whose LM head may run on answer rows only (answer_rows.py): what the method's losses
    declare (`Method.answer_row_parts`); none with `lm_head_rows="all"`."""
    if cfg.get("lm_head_rows", "answers") == "all":
        return set()
    return set(spec.resolved.answer_row_parts)


def train_labels(td: TrainData) -> dict[str, list]:
    """Every label sequence the run can draw, by batch part (the answer-row plan's input)."""
    return {
        "forget": [it["labels"] for it in td.forget_items],
        "retain": [it["labels"] for it in td.retain_items],
        "idk": [it["labels"] for variant in td.idk_items for it in variant],
    }


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


def split(model) -> tuple[Any, dict]:
    """(graphdef, parameters as a pure dict): the step's view of an nnx model (no copy)."""
    graphdef, params_state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(params_state)


@dataclasses.dataclass(frozen=True)
class Engine:
    """What the loop needs to run the step; built by `build`."""

    spec: step_lib.StepSpec  # with the answer-row plan
    graphdef: Any
    tx: optax.GradientTransformation
    lr_at: optax.Schedule
    make_state: Callable[..., step_lib.TrainState]  # (params, eps=0.0) -> a fresh train state
    step: Callable  # jitted train_step(state, batch, hp, ref_params, consts), state donated
    programs: aot.Programs  # the step's compiled programs by batch shape (compiled ahead of time)
    consts: dict  # the method's constants (RMU's control vector)
    state_shardings: Any  # None without a mesh
    replicated: Any  # None without a mesh

    @property
    def needs_reference(self) -> bool:
        return bool(self.spec.resolved.reference)

    def hp(self, dual_active: bool) -> dict:
        """The step's traced hyper-parameters (changing them never recompiles)."""
        flag = jnp.bool_(dual_active)
        return {"dual_active": flag if self.replicated is None else jax.device_put(flag, self.replicated)}

    def reference(self, params):
        """The frozen reference: its own copy, since the train state (and so `params`) is donated every
        step; None when the method reads no reference output."""
        return jax.tree.map(jnp.copy, params) if self.needs_reference else None

    def initial_state(self, params, eps: float = 0.0) -> step_lib.TrainState:
        """A fresh state on the shardings the programs were compiled for (no copy where already there)."""
        state = self.make_state(params, eps)
        return state if self.state_shardings is None else aot.place(state, self.state_shardings)


def build(
    cfg,
    model_cfg,
    graphdef,
    params,
    mode: str = "unlearn",
    *,
    spec: step_lib.StepSpec | None = None,
    td: TrainData | None = None,
    labels: Mapping[str, Iterable[Sequence[int]]] | None = None,
    mesh=None,
    steps: tuple[int, int] | None = None,
    tx: optax.GradientTransformation | None = None,
) -> Engine:
    """The engine of a run. `spec`: `make_spec(cfg, model_cfg, mode)` when not given; `labels`: the
    sequences the answer-row plan is sized for ({part: label sequences}, by default every one of `td`);
    `steps`: (steps the lr schedule spans, warmup steps), by default from `td` and the config; `mesh`:
    the state's shardings become the step's out_shardings, constants and flags are replicated; `tx`:
    the optimizer, by default the config's (optim.make_optimizer: clip + AdamW on that schedule)."""
    spec = spec or make_spec(cfg, model_cfg, mode)
    if labels is None and td is not None:
        labels = train_labels(td)
    if labels is not None:
        spec = spec.replace(answer_rows=answer_rows.plan(answer_row_parts(cfg, spec), labels))
    if steps is None:
        counts = batches.step_counts(cfg, td)
        steps = (counts.schedule, counts.warmup)
    total, warmup = steps
    tx = tx if tx is not None else optim.make_optimizer(cfg.optim, total, warmup)
    lr_at = optim.lr_schedule(cfg.optim.lr, total, warmup, cfg.optim.get("schedule", "linear"))
    primal_dual = spec.solver == "primal_dual"
    lam0 = cfg.dual.lam0 if primal_dual else 0.0
    forget_scale = 0.0 if primal_dual and bool(cfg.dual.get("normalize_forget", False)) else 1.0

    def make_state(p, eps=0.0):
        return create_state(p, tx, lam0, eps, cfg.seed, spec.dual_rule, forget_scale)

    rep = sharding.replicated(mesh) if mesh is not None else None
    abs_params = aot.abstract_like(params)
    abs_state = jax.eval_shape(make_state, abs_params)
    consts = spec.resolved.consts(cfg.seed, model_cfg.d_model)
    jit_kw = {}
    state_shd = None
    if mesh is not None:
        state_shd = aot.state_shardings(abs_state, abs_params, tx, mesh)
        abs_state = aot.with_shardings(abs_state, state_shd)
        consts = jax.device_put(consts, rep)
        jit_kw["out_shardings"] = (state_shd, rep)
    fn = jax.jit(
        lambda s, b, hp, r, c: step_lib.train_step(s, b, hp, r, c, graphdef=graphdef, tx=tx, spec=spec),
        donate_argnums=0,
        **jit_kw,
    )
    abs_ref = abs_params if spec.resolved.reference else None
    return Engine(
        spec=spec,
        graphdef=graphdef,
        tx=tx,
        lr_at=lr_at,
        make_state=make_state,
        step=fn,
        programs=aot.Programs(fn, abs_state, abs_ref, consts),
        consts=consts,
        state_shardings=state_shd,
        replicated=rep,
    )
