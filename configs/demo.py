"""The README's main job: teach the embedded SmolLM2-135M-Instruct eight fictitious people (a cached
fine-tuning stage), then unlearn two of them with PDU while the retain loss stays under
ε = 3 × its value before unlearning; prints answers and ROUGE before/after and the constraint's
verdict. About 10–11 minutes on 2 CPU cores from an empty cache (3.5 of them the cached fine-tuning stage),
no network needed beyond PyPI for the embedded model.

  cel-jax unlearn --config=configs/demo.py --workdir=/tmp/cel_demo
"""

from cel_jax.config_base import unlearn_config


def get_config():
    c = unlearn_config()
    c.data.source = "demo"
    c.data.forget_split = "forget"  # 2 people x 10 questions
    c.data.retain_split = "retain"  # 6 people x 10 questions
    c.data.max_length = 128
    c.data.bucket_multiple = 56  # every demo row is 42-54 tokens: one padded length, 56 (not 64)
    c.target.finetune = True  # the base model never knew these people: teach all 8 first (cached)
    c.target.split = "full"
    c.target.epochs = 4
    c.target.lr = 1.5e-4
    c.target.batch_size = 8
    c.batch_size = 4
    c.grad_accum = 1
    c.epochs = 8
    c.optim.lr = 2e-4
    c.optim.warmup_epochs = 0.5
    # The dual is the package default (config_base.DEFAULT_DUAL, why: docs/dual.md): alm, an augmented
    # Lagrangian (gda plus a quadratic penalty), L_f / L_f(θ0) and the violation L_r / ε − 1, so the gains
    # λ0 1, η 1, ρ 10 do not depend on the loss scale.
    # ε = (1 + 2) × the target's own retain loss before unlearning (the package default is 1 + 1): the
    # target has memorised its rows (L_r ≈ 0.12 nats per token), so at 3 × most retain answers are still
    # reproduced, and the forget loss has room to fall (docs/dual.md: the rules at α = 0.5, 1, 2).
    c.dual.eps_alpha = 2.0
    c.ckpt.every = 20
    c.ckpt.async_save = False  # an async save holds a second copy of the 1.6 GB state while it writes
    c.report.enabled = True
    c.report.batch_size = 40  # the 80 questions in two batches: fewer decoding loops on a CPU
    return c
