"""Tiny fine-tuning smoke configuration (tests): give --config.model.name_or_path=DIR."""

from cel_jax.config_base import finetune_config


def get_config():
    c = finetune_config()
    c.data.source = "demo"
    c.data.train_split = "full"
    c.data.train_rows = "0:16"
    c.data.max_length = 192
    c.batch_size = 4
    c.grad_accum = 1
    c.epochs = 2
    c.optim.lr = 3e-3
    c.optim.warmup_epochs = 0.0
    c.mesh.shape = (1, 1, 1)
    c.ckpt.every = 100
    c.ckpt.async_save = False
    c.export = False
    return c
