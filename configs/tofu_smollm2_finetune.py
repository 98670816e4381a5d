"""Fine-tune SmolLM2-135M-Instruct on TOFU (the target model: `full`; a retain model: `retain99` etc.),
the reference recipe: lr 1e-5, wd 0.01, one warmup epoch, 5 epochs, effective batch 32.
  cel-jax finetune --config=configs/tofu_smollm2_finetune.py --workdir=runs/target
  cel-jax finetune --config=configs/tofu_smollm2_finetune.py --config.data.train_split=retain99 \
      --workdir=runs/retain
"""

from cel_jax.config_base import finetune_config


def get_config():
    c = finetune_config()
    c.data.train_split = "full"
    c.batch_size = 8
    c.grad_accum = 4
    c.epochs = 5
    return c
