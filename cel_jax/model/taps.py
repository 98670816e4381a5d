"""Ghost-norm taps without state: the model names each parameter use's input and output in the program.

`tap(kind, x, y, bias)` is called where a parameter is used (y = f(x, W)). It returns y unchanged and only
adds two `name` equations (jax.ad_checkpoint.checkpoint_name; they lower to nothing) to the traced program.
A caller that wants the taps (cel_jax/evaluation/ghost.py) traces its forward once with `trace(fn)`, which
lists the tap sites in call order, and re-runs that program with `Traced.run(perturbations)`: every tapped
output gets its perturbation added (zeros: the gradient with respect to it is the output's gradient) and
every tapped input is returned. Sites inside a nested program (remat'd layers, an inner jit) cannot be
rewritten and make `trace` fail.
Kinds: "dense" (x @ W, + bias when `bias`), "scale" (RMSNorm), "embed" (ids, gathered rows), "head" (logits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jc
from jax.ad_checkpoint import checkpoint_name

PREFIX = "cel_jax.tap"


def tap(kind: str, x, y, bias: bool = False):
    """Mark x (the parameter use's input) and y (its output); returns y, numerically unchanged."""
    name = f"{PREFIX}:{kind}:{int(bias)}"
    checkpoint_name(x, f"{name}:x")
    return checkpoint_name(y, f"{name}:y")


def _site(eqn) -> tuple[str, bool, str] | None:
    """(kind, bias, "x" | "y") for a tap equation, None for any other."""
    name = eqn.params.get("name") if eqn.primitive.name == "name" else None
    if not isinstance(name, str) or not name.startswith(PREFIX + ":"):
        return None
    _, kind, bias, role = name.split(":")
    return kind, bias == "1", role


def _has_sites(jaxpr) -> bool:
    """Whether `jaxpr` or any program nested in it holds a tap equation."""
    return any(_site(e) for e in jaxpr.eqns) or any(_has_sites(j) for j in jc.subjaxprs(jaxpr))


@dataclasses.dataclass(frozen=True)
class Traced:
    """A program traced once: `kinds`, `bias`, output `shapes` of its tap sites, in call order."""

    closed: jc.ClosedJaxpr
    out_tree: Any
    kinds: tuple[str, ...]
    bias: tuple[bool, ...]
    shapes: tuple[jax.ShapeDtypeStruct, ...]

    def run(self, perturbations: Sequence[jax.Array]) -> tuple[Any, list[jax.Array]]:
        """(fn's output, tapped inputs) with perturbations[i] added to the i-th tapped output."""
        jaxpr = self.closed.jaxpr
        env: dict = dict(zip(jaxpr.constvars, self.closed.consts, strict=True))
        read = lambda v: v.val if isinstance(v, jc.Literal) else env[v]
        inputs: list[jax.Array] = []
        n_out = 0
        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            site = _site(eqn)
            if site is None:
                bind = eqn.primitive.get_bind_params(eqn.params)  # (subfuns, params) before jax 0.8
                subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*subfuns, *vals, **params)
                outs = outs if eqn.primitive.multiple_results else [outs]
            elif site[2] == "x":
                inputs.append(vals[0])
                outs = vals
            else:
                outs = [vals[0] + perturbations[n_out]]
                n_out += 1
            kept = [(v, o) for v, o in zip(eqn.outvars, outs, strict=True) if not isinstance(v, jc.DropVar)]
            env.update(kept)
        return jax.tree.unflatten(self.out_tree, [read(v) for v in jaxpr.outvars]), inputs


def trace(fn: Callable[[], Any]) -> Traced:
    """Trace the zero-argument `fn` (abstractly; it may close over tracers of an enclosing jit)."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)()
    jaxpr = closed.jaxpr
    if any(_has_sites(j) for j in jc.subjaxprs(jaxpr)):
        raise ValueError("tap sites inside a nested program (remat, jit): the taps cannot rewrite them")
    sites = [(_site(e), e) for e in jaxpr.eqns if _site(e) is not None]
    ys = [(s, e) for s, e in sites if s[2] == "y"]
    return Traced(
        closed=closed,
        out_tree=jax.tree.structure(out_shape),
        kinds=tuple(s[0] for s, _ in ys),
        bias=tuple(s[1] for s, _ in ys),
        shapes=tuple(jax.ShapeDtypeStruct(e.invars[0].aval.shape, e.invars[0].aval.dtype) for _, e in ys),
    )
