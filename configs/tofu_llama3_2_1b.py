"""PDU on TOFU with meta-llama/Llama-3.2-1B-Instruct, the authors' settings
(community/methods/PDU/run.sh): λ0 100, η 5,
ε 0.3, 5 warm-start epochs, 10 epochs, lr 1e-5, wd 0.01, one warmup epoch, linear decay; target
checkpoint `open-unlearning/tofu_Llama-3.2-1B-Instruct_full`.

Mesh (numbers from `cel-jax plan`: fp32 params + AdamW, bf16 compute, remat, PDU, 512 tokens):
  4 chips: (1,4,1) at batch 16: 10.7 GiB/chip.   8 chips: (1,8,1) at batch 32: 8.4 GiB/chip
  (pure data parallel (8,1,1) would need 23.5 GiB/chip: every chip would hold the whole optimizer state).
Check the bytes per device first:
  cel-jax plan --config=configs/tofu_llama3_2_1b.py --config.mesh.shape="(1,16,1)"
"""

from cel_jax.config_base import unlearn_config


def get_config(split: str = "forget10"):
    c = unlearn_config()
    retain = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
    c.model.name_or_path = "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    c.model.dtype = "bfloat16"  # matmuls in bf16; params, optimizer state, losses and λ stay float32
    c.model.remat = "full"  # the `cel-jax plan` numbers in the docstring assume full remat
    c.data.source = "locuslab/TOFU"
    c.data.forget_split = split
    c.data.retain_split = retain[split]
    c.mesh.shape = (1, -1, 1)
    c.batch_size = 32  # 4 per device x 8 GPUs in the reference, grad_accum 4 -> effective 128
    c.grad_accum = 4
    c.epochs = 10
    c.dual.lam0 = 100.0
    c.dual.lr = 5.0
    c.dual.eps = 0.3
    c.dual.warmup_epochs = 5
    c.ckpt.every = 100
    return c
