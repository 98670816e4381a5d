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

from cel_jax.config_base import tofu_pdu_config


def get_config(split: str = "forget10"):
    return tofu_pdu_config("open-unlearning/tofu_Llama-3.2-1B-Instruct_full", epochs=10, split=split)
