"""PDU on TOFU with meta-llama/Llama-3.2-3B-Instruct, the authors' settings
(community/methods/PDU/run.sh): λ0 100, η 5,
ε 0.3, 5 warm-start epochs, 10 epochs, lr 1e-5, wd 0.01, one warmup epoch, linear decay; target
checkpoint `open-unlearning/tofu_Llama-3.2-3B-Instruct_full`.

Mesh: FSDP over every chip, (1,-1,1); check with `cel-jax plan` (fp32 params + AdamW are 48 GB for 3B,
so at least 4 chips of 16 GiB).
Check the bytes per device first:
  cel-jax plan --config=configs/tofu_llama3_2_3b.py --config.mesh.shape="(1,16,1)"
"""

from cel_jax.config_base import tofu_pdu_config


def get_config(split: str = "forget10"):
    return tofu_pdu_config("open-unlearning/tofu_Llama-3.2-3B-Instruct_full", epochs=10, split=split)
