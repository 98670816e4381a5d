"""The method registry and a run's method, resolved once into one record.

Each method is registered once (`METHODS`): its forget loss (method_losses.py), the batch quantities the
loss reads, which hyper-parameters it takes, its default retain loss, what else it needs (IDK answers, a
hidden layer), which logits rows it reads (`rows`, a function of its hyper-parameters, stated by the
method) and the constants it needs (`consts`, e.g. RMU's control vector). `resolve` turns a run config
into one frozen `Method`: the step (step.py), the memory planner (scale/plan.py) and the answer-row plan
(answer_rows.py) read that record; nothing downstream looks a method up by name again.

Axes: D hidden width.
"""

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax

from cel_jax.unlearning.method_losses import (  # noqa: F401  (the losses' public names, re-exported)
    RETAIN_INPUTS,
    RETAIN_ROWS,
    Aux,
    Batch,
    activation_mse,
    ceu,
    grad_ascent,
    grad_diff,
    idk_dpo,
    npo,
    pdu,
    pdu_entropy,
    require_inputs,
    retain_loss,
    rmu,
    rmu_control_vector,
    satimp,
    scalarised,
    simnpo,
    undial,
    wga,
)

_FORGET_LOGITS = ("forget_logits", "forget_labels")
ANSWERS, ALL = "answers", "all"  # rows a loss reads: answer-predicting logits rows only | others too

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # The reference's dual settings (`alpha` = λ0, `retain_loss_eps`, `dual_step_size`,
    # `dual_update_upon`, `dual_warmup_epochs`) live in cfg.dual (cel_jax/unlearning/dual.py), not here.
    "pdu": dict(
        gamma=1.0,
        alpha=1.0,  # retain weight under solver=scalarized: the fixed-λ ablation (not a reference field)
        shifted=True,
        average="token",
        tie="split",
        retain_loss="nll",
    ),
    "pdu_entropy": dict(
        gamma=1.0,
        alpha=1.0,  # as pdu
        shifted=True,
        average="token",
        retain_loss="nll",
    ),
    "grad_ascent": dict(gamma=1.0, alpha=0.0, retain_loss=None),
    "grad_diff": dict(gamma=1.0, alpha=1.0, retain_loss="nll"),
    "npo": dict(beta=0.1, gamma=1.0, alpha=1.0, retain_loss="nll"),
    "simnpo": dict(beta=4.5, delta=0.0, gamma=0.125, alpha=1.0, retain_loss="nll"),
    "idk_dpo": dict(beta=0.1, gamma=1.0, alpha=1.0, retain_loss="nll"),
    # `layer` 7 = output of `model.layers.7` (HF hidden_states[8]); all parameters trainable.
    "rmu": dict(steering_coeff=2.0, layer=7, gamma=1.0, alpha=1.0, retain_loss="embed_diff"),
    "undial": dict(beta=10.0, gamma=1.0, alpha=0.0, retain_loss="nll"),  # trainer YAML lr 1e-4
    "ceu": dict(ignore_first_n_answer_tokens=1, gamma=1.0, alpha=0.0, retain_loss=None),
    "wga": dict(beta=1.0, gamma=1.0, alpha=1.0, retain_loss="nll"),  # trainer YAML 5 epochs
    "satimp": dict(beta1=5.0, beta2=1.0, gamma=0.1, alpha=1.0, retain_loss="nll"),  # trainer YAML 5 epochs
}


def _answer_rows(hp: Mapping[str, Any]) -> str:
    """Token losses on shifted rows: only the logits rows that predict an answer token."""
    return ANSWERS


def _hidden_states(hp: Mapping[str, Any]) -> str:
    """Hidden-state losses (RMU) read the residual stream, not LM-head rows."""
    return ALL


def _pdu_rows(hp: Mapping[str, Any]) -> str:
    """PDU reads other rows when unshifted (the PR147 rows) or averaged over every row."""
    return ANSWERS if hp["shifted"] is True and hp["average"] != "all" else ALL


def _rmu_consts(hp: Mapping[str, Any], key: jax.Array, d_model: int) -> dict[str, jax.Array]:
    """RMU's random direction, drawn once per run."""
    return {"control_vec": rmu_control_vector(key, d_model, hp["steering_coeff"])}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A method's registration: its loss, what it reads and needs, and its defaults."""

    name: str
    forget_fn: Callable[..., tuple[jax.Array, Aux]]
    forget_inputs: tuple[str, ...]  # keys of q the forget loss reads
    forget_args: tuple[str, ...]  # keys of `defaults` passed to forget_fn
    needs_hidden_layer: int | None  # default decoder layer whose residual stream is needed (RMU)
    needs_idk: bool  # needs the "I don't know" alternate answers (IdkDPO)
    retain_loss: str | None  # default retain loss type: "nll" | "kl" | "embed_diff" | None
    defaults: Mapping[str, Any]
    rows: Callable[[Mapping[str, Any]], str] = _answer_rows  # hyper-parameters -> ANSWERS | ALL
    consts: Callable[..., dict] | None = None  # (hp, key, d_model) -> constants the loss reads


def _spec(name, fn, inputs, args, *, layer=None, idk=False, rows=_answer_rows, consts=None) -> MethodSpec:
    d = METHOD_DEFAULTS[name]
    return MethodSpec(
        name, fn, inputs, args, layer, idk, d["retain_loss"], types.MappingProxyType(d), rows, consts
    )


METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        _spec("pdu", pdu, _FORGET_LOGITS, ("shifted", "average", "tie"), rows=_pdu_rows),
        _spec("pdu_entropy", pdu_entropy, _FORGET_LOGITS, ("shifted", "average"), rows=_pdu_rows),
        _spec("grad_ascent", grad_ascent, _FORGET_LOGITS, ()),
        _spec("grad_diff", grad_diff, _FORGET_LOGITS, ()),
        _spec("npo", npo, (*_FORGET_LOGITS, "ref_forget_nll"), ("beta",)),
        _spec("simnpo", simnpo, _FORGET_LOGITS, ("beta", "delta")),
        _spec(
            "idk_dpo",
            idk_dpo,
            (*_FORGET_LOGITS, "idk_logits", "idk_labels", "ref_forget_nll", "ref_idk_nll"),
            ("beta",),
            idk=True,
        ),
        _spec(
            "rmu",
            rmu,
            ("forget_hidden", "forget_labels", "control_vec"),
            (),
            layer=7,
            rows=_hidden_states,
            consts=_rmu_consts,
        ),
        _spec("undial", undial, (*_FORGET_LOGITS, "ref_forget_logits"), ("beta",)),
        _spec("ceu", ceu, _FORGET_LOGITS, ("ignore_first_n_answer_tokens",)),
        _spec("wga", wga, _FORGET_LOGITS, ("beta",)),
        _spec("satimp", satimp, _FORGET_LOGITS, ("beta1", "beta2")),
    )
}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (`cel-jax unlearn --config.method=NAME` then runs it); a name that is
    already registered fails."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    missing = sorted(set(spec.forget_args) - set(spec.defaults))
    if missing or "retain_loss" not in spec.defaults:
        raise ValueError(f"method {spec.name!r}: defaults lack {missing or ['retain_loss']}")
    METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered method (tests register toy methods and remove them again)."""
    METHODS.pop(name, None)


def get_method(name: str) -> MethodSpec:
    """The registry entry for `name`; ValueError listing the valid names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; valid names: {sorted(METHODS)}")
    return METHODS[name]


def resolve_hparams(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of `name` updated with `overrides`; unknown keys raise ValueError."""
    spec = get_method(name)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {unknown} for method {name!r}; valid: {sorted(spec.defaults)}"
        )
    return {**spec.defaults, **overrides}


# ----------------------------------------------------------------------------------------- the record


@dataclasses.dataclass(frozen=True)
class Method:
    """A run's method, resolved once (hashable: it is part of the compiled step's static spec)."""

    name: str  # registry name, or "finetune"
    solver: str  # primal_dual | scalarized | finetune
    forget_fn: Callable[..., tuple[jax.Array, Aux]] | None  # None: fine-tuning (CE on the forget part)
    forget_inputs: tuple[str, ...]
    forget_hp: tuple[tuple[str, Any], ...]  # ((name, value), ...) passed to forget_fn
    hparams: tuple[tuple[str, Any], ...]  # every hyper-parameter: defaults updated by the config
    retain_kind: str | None  # "nll" | "kl" | "embed_diff" | None
    gamma: float = 1.0  # weight of L_f
    alpha: float = 1.0  # weight of L_r under solver=scalarized
    compat: bool = False  # reproduce the reference's documented defects (method_losses.py)
    hidden_layer: int | None = None  # decoder layer whose residual stream the losses read
    needs_idk: bool = False
    reference: frozenset[str] = frozenset()  # reference-model quantities the losses read ("ref_...")
    answer_row_parts: frozenset[str] = frozenset()  # parts whose losses read only answer-predicting rows
    consts_fn: Callable[..., dict] | None = None

    @property
    def streams(self) -> int:
        """Policy forward passes inside the gradient (forget, retain, idk)."""
        return 1 + (self.retain_kind is not None) + self.needs_idk

    def forget_loss(self, q: Batch) -> tuple[jax.Array, Aux]:
        require_inputs(q, self.forget_inputs, f"method {self.name!r}")
        return self.forget_fn(q, compat=self.compat, **dict(self.forget_hp))

    def consts(self, seed: int, d_model: int) -> dict[str, jax.Array]:
        """The constants the losses read ({} for most methods), drawn from the run's seed."""
        if self.consts_fn is None:
            return {}
        return self.consts_fn(dict(self.hparams), jax.random.key(seed + 17), d_model)


FINETUNE = Method("finetune", "finetune", None, (), (), (), None, answer_row_parts=frozenset({"forget"}))


def resolve_method(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    solver: str = "scalarized",
    compat: bool = False,
    n_layers: int | None = None,
) -> Method:
    """The record of method `name` with `overrides` of its defaults, for `solver`. A forget-only loss
    (no retain loss) under primal_dual bounds the retain NLL: that is its constrained version."""
    spec = get_method(name)
    hp = resolve_hparams(name, overrides)
    retain = hp.get("retain_loss", spec.retain_loss)
    if solver == "primal_dual" and retain is None:
        retain = "nll"
    if retain is not None and retain not in RETAIN_INPUTS:
        raise ValueError(f"unknown retain loss {retain!r}; expected one of {tuple(RETAIN_INPUTS)}")
    layer = None
    if spec.needs_hidden_layer is not None:
        layer = int(hp.get("layer", spec.needs_hidden_layer))
        if n_layers is not None and not 0 <= layer < n_layers:
            raise ValueError(f"{name}: layer {layer} outside the model's {n_layers} layers")
    reads = spec.forget_inputs + (RETAIN_INPUTS[retain] if retain else ())
    parts = set()
    if not compat:  # compat: unshifted rows, all-row averages, the reference's KL over every position
        if spec.rows(hp) == ANSWERS:
            parts |= {"forget", "idk"} if spec.needs_idk else {"forget"}
        if retain is not None and RETAIN_ROWS[retain] == ANSWERS:
            parts.add("retain")
    return Method(
        name=name,
        solver=solver,
        forget_fn=spec.forget_fn,
        forget_inputs=spec.forget_inputs,
        forget_hp=tuple(sorted((k, hp[k]) for k in spec.forget_args)),
        hparams=tuple(sorted(hp.items())),
        retain_kind=retain,
        gamma=float(hp.get("gamma", 1.0)),
        alpha=float(hp.get("alpha", 1.0)),
        compat=bool(compat),
        hidden_layer=layer,
        needs_idk=spec.needs_idk,
        reference=frozenset(k for k in reads if k.startswith("ref_")),
        answer_row_parts=frozenset(parts),
        consts_fn=spec.consts,
    )


def method_overrides(cfg) -> dict[str, Any]:
    """A run config's `method_args` as a plain dict (overrides of the method's defaults)."""
    return dict(cfg.method_args.to_dict()) if cfg.get("method_args") is not None else {}


def resolve(cfg, n_layers: int | None = None, mode: str = "unlearn") -> Method:
    """The run's method record from its config (`method`, `method_args`, `solver`, `compat`);
    `n_layers` checks a hidden-state layer against the model."""
    if mode == "finetune":
        return FINETUNE
    return resolve_method(
        cfg.method, method_overrides(cfg), solver=cfg.solver, compat=bool(cfg.compat), n_layers=n_layers
    )


def requires_reference(name: str, retain: str | None = "default") -> bool:
    """Whether the method, with retain loss `retain` ("default" = its own), needs a reference model."""
    return bool(resolve_method(name, {} if retain == "default" else {"retain_loss": retain}).reference)


def forget_loss(name: str, q: Batch, *, compat: bool = False, **overrides: Any) -> tuple[jax.Array, Aux]:
    """Dispatch: the forget loss of method `name` with its defaults updated by `overrides`."""
    return resolve_method(name, overrides, compat=compat).forget_loss(q)
