"""Defaults shared by the `configs/*.py` files (each returns a ConfigDict built from these)."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from cel_jax.data.qa import TOFU_RETAIN


def _common() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name_or_path="smollm2-135m-instruct", dtype="float32", param_dtype="float32", remat="none")
    c.data = dict(
        source="locuslab/TOFU",  # hub (cached by datasets; $CEL_JAX_TOFU_DIR: a local copy), or a folder
        forget_split="forget01",
        retain_split="retain99",
        train_split="full",
        train_rows="",
        forget_rows="",
        retain_rows="",
        format="qa",  # "qa": question-answer rows | "text": raw text cut into max_length chunks (MUSE)
        text_config="raw",  # format "text": the splits live in <source>/<text_config>/<split>
        template="chat",
        system_prompt="default",
        max_length=512,
        bucket_multiple=32,
        on_too_long="error",
        compat_mask=False,
    )
    # "answers": LM head, softmax and losses only on rows that predict answer tokens where every loss
    # reads only those (same values, less work; cel_jax/unlearning/answer_rows.py); "all": every row.
    c.lm_head_rows = "answers"
    c.mesh = dict(shape=(1, -1, 1))  # (data, fsdp, tensor); -1 takes the remaining devices
    # The reference's TOFU recipe: lr 1e-5, wd 0.01, one warmup epoch, linear decay, clip 1.0.
    c.optim = dict(
        lr=1e-5, weight_decay=0.01, warmup_epochs=1.0, schedule="linear", clip=1.0, b1=0.9, b2=0.999, eps=1e-8
    )
    c.batch_size = 4  # micro-batch, global over all devices
    c.grad_accum = 4
    c.epochs = 10
    c.max_steps = config_dict.placeholder(int)  # stop after N optimizer steps (smoke runs)
    c.seed = 0
    c.shuffle = True
    # keep_final: keep the last checkpoint (optimizer state) once the model is exported; else dropped.
    # save_final: checkpoint the end state before the final evaluation and export (a crash there resumes
    # at the end instead of retraining); off for a stage whose export follows at once (the target's)
    c.ckpt = dict(every=50, keep=2, async_save=True, keep_final=False, save_final=True)
    c.export = True
    # Rerun into a work dir: auto (same config resumes, another is refused) | force | restart (run_dir.py)
    c.resume = "auto"
    # Answers to the forget / retain questions before and after unlearning, ROUGE-L recall, a table
    c.report = dict(
        enabled=False,
        examples=2,
        max_new_tokens=48,
        max_questions=config_dict.placeholder(int),
        batch_size=20,
    )
    # Fine-tune model.name_or_path on `split` first (cached in $CEL_JAX_CACHE/targets): training/target.py
    c.target = dict(
        finetune=False, split="full", epochs=5, lr=1e-4, batch_size=8, grad_accum=1, warmup_epochs=0.0
    )
    c.distributed = dict(coordinator_address="", num_processes=0, process_id=-1)
    # Evaluate the final model in-process: `eval.overrides` are fields of configs/eval/<benchmark>.py
    c.eval = dict(enabled=False, benchmark="tofu", overrides=dict(forget_split="forget01"))
    return c


def _dual(**over) -> dict:
    d = dict(
        rule="gda",  # gda (the authors' projected ascent) | pi (νPI) | alm (augmented Lagrangian)
        lam0=1.0,
        lr=1.0,  # η: dual step size (the integral gain)
        kp=0.0,  # pi: proportional gain κ_p
        nu=0.0,  # pi: EMA coefficient ν of the violation
        rho=1.0,  # alm: penalty coefficient ρ
        eps=config_dict.placeholder(float),
        eps_alpha=config_dict.placeholder(float),
        # retain rows (the first N; None: all) of L_r(π_ref) for eps_alpha, and of the final model's check
        eps_ref_items=config_dict.placeholder(int),
        lam_max=config_dict.placeholder(float),
        warmup_epochs=0,  # epochs with λ held at λ0 before the rule runs (the authors' warm start)
        mode="step",  # step | microbatch | epoch | fixed
        normalize_forget=False,  # L_f / L_f(first micro-batch): λ0 and η portable across models
        relative=False,  # constraint L_r / ε − 1 ≤ 0: violations in fractions of ε (see unlearning/dual.py)
        tolerance=0.0,  # the verdicts: last-epoch mean (and final model) retain loss <= eps + tolerance
    )
    d.update(over)
    return d


def unlearn_config() -> ml_collections.ConfigDict:
    c = _common()
    c.method = "pdu"
    c.method_args = ml_collections.ConfigDict()  # overrides of the method's reference defaults
    c.solver = "primal_dual"  # primal_dual | scalarized
    c.compat = False  # reproduce the reference's documented defects (see docs/differences.md)
    # Dual (unlearning/dual.py): the default rule, chosen by evidence (docs/dual.md): alm with the forget
    # loss normalised by its start value and the violation as a fraction of ε, so one set of gains serves
    # any model and ε; ε = 2 × the model's own retain loss before unlearning. The authors' gda, λ0 100,
    # η 5, ε 0.3, 5 warm-start epochs: `authors_dual()` (the TOFU / MUSE configs), or --config.dual.*.
    c.dual = _dual(**DEFAULT_DUAL)
    c.dual.eps_alpha = 1.0
    return c


# The default dual recipe (configs/demo.py, bench/tofu_sweep.py and bench/dual_rules.py measure it).
DEFAULT_DUAL = dict(
    rule="alm", lam0=1.0, lr=1.0, rho=10.0, normalize_forget=True, relative=True, warmup_epochs=0, mode="step"
)


def authors_dual(**over) -> ml_collections.ConfigDict:
    """The PDU authors' dual (community/methods/PDU/run.sh): projected gradient ascent (gda) on the raw
    logit-margin loss with an absolute ε, λ0 100, η 5, ε 0.3, 5 warm-start epochs; `over` changes fields.
    Use as `c.dual = authors_dual(...)` on a config from `unlearn_config()`."""
    d = ml_collections.ConfigDict(_dual(rule="gda", lam0=100.0, lr=5.0, warmup_epochs=5, mode="step"))
    d.eps = 0.3
    d.update(over)
    return d


def finetune_config() -> ml_collections.ConfigDict:
    c = _common()
    c.epochs = 5
    c.dual = _dual(lam0=0.0, lr=0.0, warmup_epochs=0, mode="fixed")
    return c


def tofu_pdu_config(target: str, epochs: int, split: str = "forget10") -> ml_collections.ConfigDict:
    """PDU on TOFU with the authors' settings (community/methods/PDU/run.sh): gda, λ0 100, η 5, ε 0.3,
    5 warm-start epochs, λ updated per micro-batch as the reference does, lr 1e-5, wd 0.01, one warmup
    epoch, linear decay, effective batch 128."""
    if split not in TOFU_RETAIN:
        raise ValueError(f"unknown TOFU forget split {split!r}; expected one of {sorted(TOFU_RETAIN)}")
    c = unlearn_config()
    c.model.name_or_path = target
    c.model.dtype = "bfloat16"  # matmuls in bf16; params, optimizer state, losses and λ stay float32
    c.model.remat = "full"  # the `cel-jax plan` numbers in the configs' docstrings assume full remat
    c.data.source = "locuslab/TOFU"
    c.data.forget_split = split
    c.data.retain_split = TOFU_RETAIN[split]
    c.mesh.shape = (1, -1, 1)
    c.batch_size = 32  # 4 per device x 8 GPUs in the reference, grad_accum 4 -> effective 128
    c.grad_accum = 4
    c.epochs = epochs
    c.dual = authors_dual(mode="microbatch")  # the reference updates λ per micro-batch: same trajectory
    c.ckpt.every = 100
    c.eval.overrides.forget_split = split
    return c
