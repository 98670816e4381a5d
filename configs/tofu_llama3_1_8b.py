"""PDU on TOFU with meta-llama/Llama-3.1-8B-Instruct, the authors' settings
(community/methods/PDU/run.sh): λ0 100, η 5,
ε 0.3, 5 warm-start epochs, 30 epochs, lr 1e-5, wd 0.01, one warmup epoch, linear decay; target
checkpoint `open-unlearning/tofu_Llama-3.1-8B-Instruct_full`.

Mesh (numbers from `cel-jax plan`: fp32 params + AdamW, bf16 compute, remat, PDU, 512 tokens):
  16 chips: (1,16,1), FSDP over every chip: 13.4 GiB/chip at batch 32 (11.6 at 16). On v5e (16 GiB) NPO-style
            methods add a 1.9 GiB reference copy and do not fit: use (1,8,2) at batch 16 (tensor parallel
            within a host only; Llama-3's 8 KV heads allow tensor in {1,2,4,8}). On v4 (32 GiB):
            (1,16,1) with remat=dots_with_no_batch_dims_saveable, 18.6 GiB.
  32 chips: (1,32,1): 7.9 GiB/chip.
FSDP first because params + optimizer state (16 bytes/param = 128 GB for 8B) dominate; activations at
batch 32 x 512 are small, so tensor parallelism only adds collectives. Raise the data axis only when the
global batch exceeds the chip count.
Check the bytes per device first:
  cel-jax plan --config=configs/tofu_llama3_1_8b.py --config.mesh.shape="(1,16,1)"
"""

from cel_jax.config_base import tofu_pdu_config


def get_config(split: str = "forget10"):
    return tofu_pdu_config("open-unlearning/tofu_Llama-3.1-8B-Instruct_full", epochs=30, split=split)
