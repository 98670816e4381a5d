"""Ahead-of-time compilation of the train step, before the optimizer state exists.

Compiling the step (XLA + LLVM) takes ~0.7 GB of host memory for a 135M-parameter model for half a
minute. Done lazily by jit at the first step, that transient comes on top of the parameters, the AdamW
moments (1.5 GB together) and the step's own temporaries (1.2 GB), and was the job's peak. Here the
step is compiled from shapes and shardings (`jax.ShapeDtypeStruct`) for every batch shape the run will
meet, then the state is built and the loop calls the compiled programs. A shape met only later compiles
on first use, as jit would.

The abstract state carries the shardings the real one gets (`state_shardings`), and the real state is
placed on them (`place`: no copy where a leaf is already there), so the programs accept it as it is.
"""

from __future__ import annotations

import jax
import optax

from cel_jax.scale import sharding


def state_shardings(abs_state, abs_params, tx, mesh):
    """Shardings of a TrainState: parameters and the optimizer's parameter-shaped moments follow the
    parameters; counts, λ, ε, the RNG key and the other scalars are replicated."""
    rep = sharding.replicated(mesh)
    param_shd = jax.tree.map(lambda x: x.sharding, abs_params)
    opt = optax.tree_map_params(
        tx, lambda _, s: s, abs_state.opt_state, param_shd, transform_non_params=lambda _: rep
    )
    return jax.tree.map(lambda _: rep, abs_state).replace(params=param_shd, opt_state=opt)


def with_shardings(abstract, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def place(state, shardings):
    """`state` on `shardings`: leaves already there are kept as they are (no copy)."""

    def one(x, s):
        have = getattr(x, "sharding", None)
        return x if have is not None and have.is_equivalent_to(s, x.ndim) else jax.device_put(x, s)

    return jax.tree.map(one, state, shardings)


def shape_key(tree) -> tuple:
    """What a compiled program is specialised on: the shapes and dtypes of the batch."""
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings where the leaves have them) of a tree of arrays or structs."""
    return jax.tree.map(
        lambda x: (
            x
            if isinstance(x, jax.ShapeDtypeStruct)
            else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
        ),
        tree,
    )


class Programs:
    """The step's compiled programs by batch shape: `compile` ahead of time, `__call__` in the loop."""

    def __init__(self, jitted, abs_state, abs_ref, consts):
        self.jitted, self.abs_state, self.abs_ref, self.consts = jitted, abs_state, abs_ref, consts
        self.by_shape: dict[tuple, jax.stages.Compiled] = {}

    def compile(self, batch, hp) -> jax.stages.Compiled:
        key = shape_key(batch)
        if key not in self.by_shape:
            lowered = self.jitted.lower(
                self.abs_state, abstract_like(batch), abstract_like(hp), self.abs_ref, self.consts
            )
            self.by_shape[key] = lowered.compile()
        return self.by_shape[key]

    def __call__(self, state, batch, hp, ref_params, consts):
        return self.compile(batch, hp)(state, batch, hp, ref_params, consts)
