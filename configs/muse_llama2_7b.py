"""PDU on MUSE (News or Books) with the MUSE Llama-2-7B target, the authors' settings: λ0 50, η 1,
3 warm-start epochs, 10 epochs, lr 1e-5, constant schedule, no weight decay, effective batch 256
(4 per device x 8 GPUs x 8 accumulation), ε 1.5 (News) / 0.1 (Books).

MUSE trains on raw text chunks (OU's PretrainingDataset): `raw/forget` and `raw/retain1`, each split's texts
joined and cut into 2048-token chunks (`data.format="text"`).
"""

from cel_jax.config_base import authors_dual, unlearn_config


def get_config(corpus: str = "news"):
    c = unlearn_config()
    name = {"news": "News", "books": "Books"}[corpus]
    c.model.name_or_path = f"muse-bench/MUSE-{name}_target"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots_with_no_batch_dims_saveable"
    c.data.source = f"muse-bench/MUSE-{name}"
    c.data.format, c.data.text_config = "text", "raw"
    c.data.forget_split, c.data.retain_split = "forget", "retain1"
    c.data.template = "qa_base"
    c.data.max_length = 2048
    c.mesh.shape = (1, -1, 1)
    c.batch_size = 32
    c.grad_accum = 8
    c.epochs = 10
    c.optim.schedule = "constant"
    c.optim.warmup_epochs = 0.0
    c.optim.weight_decay = 0.0
    c.dual = authors_dual(lam0=50.0, lr=1.0, eps={"news": 1.5, "books": 0.1}[corpus], warmup_epochs=3)
    return c
