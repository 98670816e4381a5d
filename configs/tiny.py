"""A tiny smoke configuration (tests and quick checks): give --config.model.name_or_path=DIR."""

from cel_jax.config_base import authors_dual, unlearn_config


def get_config():
    c = unlearn_config()
    c.data.source = "demo"
    c.data.forget_split = "forget"
    c.data.retain_split = "retain"
    c.data.max_length = 192
    c.batch_size = 4
    c.grad_accum = 2
    c.epochs = 3
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 0.0
    c.dual = authors_dual(lam0=1.0, lr=0.5, eps=3.0, warmup_epochs=1)  # gda: λ's path is easy to pin
    c.max_steps = 4
    c.ckpt.every = 2
    c.ckpt.async_save = False
    c.export = False
    c.mesh.shape = (1, 1, 1)
    return c
