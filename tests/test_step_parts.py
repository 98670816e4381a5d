"""One decoder pass over the stacked parts of a step (step.STACK_PARTS) == one pass per part."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_answer_rows import _batch, _tiny, assert_same_step

from cel_jax import answer_rows, config_base, methods, train
from cel_jax import step as step_lib

CASES = [  # every way a step combines parts: 2 parts, 3 parts, reference passes, hidden states
    ("pdu", "primal_dual", {}),
    ("grad_diff", "scalarized", {"retain_loss": "kl"}),
    ("npo", "scalarized", {}),
    ("idk_dpo", "scalarized", {}),
    ("undial", "scalarized", {}),
    ("rmu", "scalarized", {"layer": 1}),
]


@pytest.mark.parametrize("method,solver,over", CASES, ids=[c[0] for c in CASES])
def test_stacked_parts_step_equals_one_pass_per_part(method, solver, over, monkeypatch):
    model = _tiny()
    cfg = config_base.unlearn_config()
    cfg.method, cfg.solver = method, solver
    for k, v in over.items():
        cfg.method_args[k] = v
    spec = train.make_spec(cfg, model.cfg, "unlearn")
    parts = train.answer_row_parts(cfg, spec)
    batch = _batch(
        np.random.default_rng(2), ("forget", "retain", "idk") if method == "idk_dpo" else ("forget", "retain")
    )
    spec = spec.replace(
        answer_rows=tuple(
            (p, answer_rows.capacity(np.asarray(batch[p]["labels"]).reshape(-1, 48))) for p in sorted(parts)
        )
    )
    assert (spec.hidden_layer is not None) == (method == "rmu")
    graphdef, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    ref = jax.tree.map(jnp.copy, params) if step_lib.needed_reference(spec) else None
    consts = {"control_vec": methods.rmu_control_vector(jax.random.key(0), model.cfg.d_model)}
    consts = consts if method == "rmu" else {}
    tx = optax.sgd(1.0)  # new params = params - grads: compares the gradients themselves
    hp = {"dual_lr": jnp.float32(5.0), "dual_active": jnp.bool_(True), "lam_max": jnp.float32(jnp.inf)}
    outs = {}
    for mode in ("separate", "stack"):
        monkeypatch.setattr(step_lib, "STACK_PARTS", mode)
        st = train.create_state(jax.tree.map(jnp.copy, params), tx, 2.0, 0.5, 0)
        fn = jax.jit(
            lambda s, b: step_lib.train_step(s, b, hp, ref, consts, graphdef=graphdef, tx=tx, spec=spec)
        )
        outs[mode] = fn(st, batch)
    keys = ("loss", "forget_loss", "retain_loss", "grad_norm", "dual_next")
    assert_same_step(params, outs["separate"], outs["stack"], keys)


def test_stacking_is_off_on_a_mesh_and_checks_hidden_layers(monkeypatch):
    monkeypatch.setattr(step_lib, "STACK_PARTS", "auto")
    assert step_lib._stack_parts() == (jax.device_count() == 1)
    model = _tiny()
    part = {k: v[0] for k, v in _batch(np.random.default_rng(0), ("forget",))["forget"].items()}
    with pytest.raises(ValueError, match="one hidden layer per step"):
        monkeypatch.setattr(step_lib, "STACK_PARTS", "stack")
        step_lib._forward_parts(model, [part, part], [0, 1])
