"""PDU on TOFU with the embedded SmolLM2-135M-Instruct (the authors' TOFU settings: λ0 100, η 5, ε 0.3,
5 warm-start epochs, 10 epochs, lr 1e-5, wd 0.01, one warmup epoch, linear decay, effective batch 32).

Point `model.name_or_path` at a TOFU target model (e.g. one made with configs/tofu_smollm2_finetune.py);
the untouched embedded model has not seen TOFU.
  cel-jax unlearn --config=configs/tofu_smollm2.py --config.model.name_or_path=runs/target/model --workdir=...
"""

from cel_jax.config_base import authors_dual, unlearn_config


def get_config(split: str = "forget01"):
    c = unlearn_config()
    retain = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
    c.data.forget_split = split
    c.data.retain_split = retain[split]
    c.batch_size = 8
    c.grad_accum = 4
    c.epochs = 10
    c.dual = authors_dual()
    c.eval.overrides.forget_split = split  # --config.eval.enabled=True evaluates the result in-process
    return c
