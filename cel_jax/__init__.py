"""cel_jax: constrained (primal-dual) unlearning of LLMs in JAX/Flax.

Layout, following the data path: `model/` (families, HF I/O, the embedded model), `data/` (sources,
formatting, batching), `unlearning/` (losses, methods, dual, objective and step), `training/` (the
loop, optimiser, checkpoints), `evaluation/` (metrics, suites, forward and generation), `scale/`
(mesh, sharding, multi-host, planner), `cli/`. The public API is reachable from here:
`cel_jax.load_pretrained`, `cel_jax.save_pretrained`, `cel_jax.train.run`, `cel_jax.losses`,
`cel_jax.dual`, `cel_jax.methods`, `cel_jax.evaluate_tofu`.
"""

import importlib

from cel_jax.model.hf_io import load_pretrained, save_pretrained

_LAZY = {  # public name -> where it lives (imported on first use: `import cel_jax` stays light)
    "train": "cel_jax.training.train",
    "losses": "cel_jax.unlearning.losses",
    "dual": "cel_jax.unlearning.dual",
    "methods": "cel_jax.unlearning.methods",
    "evaluate_tofu": "cel_jax.evaluation.driver:evaluate_tofu",
    "evaluate_muse": "cel_jax.evaluation.driver:evaluate_muse",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cel_jax' has no attribute {name!r}")
    module, _, attr = _LAZY[name].partition(":")
    value = importlib.import_module(module)
    return getattr(value, attr) if attr else value


__all__ = ["load_pretrained", "save_pretrained", *_LAZY]
__version__ = "0.1.0"
