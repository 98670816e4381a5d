"""The README's main job: teach the embedded SmolLM2-135M-Instruct eight fictitious people (a cached
fine-tuning stage), then unlearn two of them with PDU while the retain loss stays under
ε = 1.25 × its value before unlearning; prints answers and ROUGE before/after and the constraint's
verdict. About 5 minutes on 2 CPU cores, no network needed beyond PyPI for the embedded model.

  cel-jax unlearn --config=configs/demo.py --workdir=/tmp/cel_demo
"""

from cel_jax.config_base import unlearn_config


def get_config():
    c = unlearn_config()
    c.data.source = "demo"
    c.data.forget_split = "forget"  # 2 people x 10 questions
    c.data.retain_split = "retain"  # 6 people x 10 questions
    c.data.max_length = 128
    c.target.finetune = True  # the base model never knew these people: teach all 8 first (cached)
    c.target.split = "full"
    c.target.epochs = 5
    c.target.lr = 1e-4
    c.target.batch_size = 8
    c.batch_size = 4
    c.grad_accum = 1
    c.epochs = 5
    c.optim.lr = 3e-5
    c.optim.warmup_epochs = 0.5
    c.dual.rule = "pi"
    c.dual.normalize_forget = True
    c.dual.lam0 = 1.0
    c.dual.lr = 2.0
    c.dual.kp = 10.0
    c.dual.eps = None
    c.dual.eps_alpha = 0.25  # ε = 1.25 × the target's own retain loss before unlearning
    c.dual.warmup_epochs = 0
    c.ckpt.every = 10
    c.ckpt.async_save = False  # an async save holds a second copy of the 1.6 GB state while it writes
    c.report.enabled = True
    return c
