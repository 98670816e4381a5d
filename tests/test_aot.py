"""Ahead-of-time compilation of the step: compiled before the optimizer state exists, once per batch
shape, on the shardings the real state has (so no copy of the state on a sharded mesh)."""

import jax
import jax.numpy as jnp
import numpy as np
from test_train import model_dir, rows, tiny_cfg  # noqa: F401  (model_dir is a fixture)

from cel_jax.scale import aot, sharding
from cel_jax.training import engine, optim, train
from cel_jax.unlearning import step as step_lib


def test_every_step_shape_is_compiled_before_the_optimizer_state_exists(model_dir, monkeypatch, tmp_path):  # noqa: F811
    seen = []
    real_create = engine.create_state

    def create_state(params, *a, **k):
        concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params))
        if concrete:  # the real state (jax.eval_shape calls it with abstract parameters first)
            seen.append(step_lib.TRACE_COUNT["primal_dual"])
        return real_create(params, *a, **k)

    monkeypatch.setattr(engine, "create_state", create_state)
    before = step_lib.TRACE_COUNT["primal_dual"]
    train.run(tiny_cfg(model_dir, max_steps=9, epochs=3, **{"data.bucket_multiple": 8}), str(tmp_path))
    shapes = {r["seq_len"] for r in rows(tmp_path)}
    assert len(shapes) > 1  # the test means something: several buckets
    assert seen == [before + len(shapes)]  # all compiled before the state was built, none after
    assert step_lib.TRACE_COUNT["primal_dual"] == before + len(shapes)


def test_state_shardings_match_the_real_state_on_a_sharded_mesh():
    mesh = sharding.make_mesh((1, -1, 1))  # fsdp over the 8 test devices
    assert mesh.devices.size > 1
    params = {
        "w": jax.device_put(jnp.ones((16, 8)), sharding.NamedSharding(mesh, sharding.P("fsdp", None))),
        "b": jax.device_put(jnp.zeros((8,)), sharding.replicated(mesh)),
    }
    tx = optim.make_optimizer(train_cfg_optim(), 10, 2)
    make = lambda p: engine.create_state(p, tx, 1.0, 0.5, 0)  # noqa: E731
    abs_params = aot.abstract_like(params)
    shd = aot.state_shardings(jax.eval_shape(make, abs_params), abs_params, tx, mesh)
    state = make(params)
    placed = aot.place(state, shd)
    moments = [s for s in jax.tree.leaves(placed.opt_state) if getattr(s, "shape", ()) == (16, 8)]
    assert len(moments) == 2  # AdamW's mu and nu follow the parameter's sharding
    for x in moments:
        assert x.sharding.is_equivalent_to(params["w"].sharding, 2)
    for x, s in zip(jax.tree.leaves(placed), jax.tree.leaves(shd), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    assert placed.params["w"] is state.params["w"]  # already there: not copied


def train_cfg_optim():
    from ml_collections import ConfigDict

    return ConfigDict(dict(lr=1e-3, weight_decay=0.01, clip=1.0, schedule="linear"))


def test_programs_compile_once_per_shape_and_run_like_jit():
    f = jax.jit(lambda s, b, hp, r, c: (s + b["x"].sum() * hp["k"], s), donate_argnums=0)
    progs = aot.Programs(f, jax.ShapeDtypeStruct((), jnp.float32), None, {})
    hp = {"k": jnp.float32(2.0)}
    b3, b4 = {"x": np.ones((3,), np.float32)}, {"x": np.ones((4,), np.float32)}
    progs.compile(b3, hp)
    progs.compile(b3, hp)
    assert len(progs.by_shape) == 1
    out, _ = progs(jnp.float32(1.0), b4, hp, None, {})  # a new shape compiles on first use
    assert len(progs.by_shape) == 2 and float(out) == 9.0
    want = f(jnp.float32(1.0), b3, hp, None, {})[0]
    assert float(progs(jnp.float32(1.0), b3, hp, None, {})[0]) == float(want)
