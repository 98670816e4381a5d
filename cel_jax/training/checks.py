"""Cheap checks of a run config, before anything is loaded or compiled."""

from __future__ import annotations

import math

import jax
import numpy as np

from cel_jax.scale import sharding
from cel_jax.unlearning import dual as dual_lib
from cel_jax.unlearning import methods

SOLVERS = ("primal_dual", "scalarized")
LM_HEAD_ROWS = ("answers", "all")  # LM head on answer-predicting rows only (answer_rows.py) | every row


def validate_config(cfg, mode: str) -> None:
    """ValueError naming the bad key: method, solver, dual, batch, optimiser and mesh settings."""
    if mode == "unlearn":
        if cfg.solver not in SOLVERS:
            raise ValueError(f"unknown solver {cfg.solver!r}; expected one of {SOLVERS}")
        dual_lib.reject_dual_method_args(methods.method_overrides(cfg))
        methods.resolve(cfg)  # unknown method or hyper-parameter -> ValueError with the valid names
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
