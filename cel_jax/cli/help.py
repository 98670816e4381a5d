"""`cel-jax --help` and `cel-jax <command> --help`: the commands, their flags and the most used config
fields with their values (from the given config file or the command's default config)."""

from __future__ import annotations

from typing import Any

from cel_jax.cli.flags import COMMANDS, value_at

# The most used --config.* fields of each config command, shown by `cel-jax <command> --help`.
_TRAIN_HELP = {
    "model.name_or_path": "HF folder, hub name or alias",
    "model.dtype": "compute dtype: float32 | bfloat16",
    "model.param_dtype": "parameter dtype",
    "model.remat": "activation recomputation: none | full | ...",
    "data.source": "'demo', a folder of <split>.jsonl files, or a hub data set",
    "data.forget_split": "forget set (file / config name)",
    "data.retain_split": "retain set",
    "data.train_split": "fine-tuning set",
    "data.max_length": "longest example in tokens",
    "method": "unlearning method (methods: below)",
    "solver": "primal_dual (ε constraint) | scalarized (fixed λ)",
    "epochs": "passes over the training data",
    "batch_size": "micro-batch size, global over all devices",
    "grad_accum": "micro-batches per optimizer step",
    "max_steps": "stop after N optimizer steps (None: all epochs)",
    "optim.lr": "peak learning rate",
    "dual.lam0": "initial λ",
    "dual.lr": "dual step size η",
    "dual.eps": "absolute bound ε on the retain loss (clears dual.eps_alpha)",
    "dual.eps_alpha": "relative bound ε = (1+α)·L_r(start model) (clears dual.eps)",
    "mesh.shape": "(data, fsdp, tensor) device mesh; -1 takes the rest",
    "seed": "random seed",
    "eval.enabled": "evaluate the final model in-process (eval.*)",
}
_EVAL_HELP = {
    "model": "model to evaluate: HF folder, hub name or alias",
    "benchmark": "tofu | muse",
    "data_dir": "folder of <split>.jsonl files, or a hub data set",
    "forget_split": "forget set (TOFU)",
    "retain_logs_path": "retain model's <NAME>_EVAL.json (forget_quality, privleak)",
    "reference_model_path": "model for mia_reference",
    "max_items": "first N items of every set (quick runs)",
    "batch_size": "rows per forward batch",
    "dtype": "compute dtype: float32 | bfloat16",
    "metrics": "metrics to compute",
}
CONFIG_FIELDS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "unlearn": (
        _TRAIN_HELP,
        ("model.name_or_path", "data.source", "data.forget_split", "data.retain_split", "method", "solver",
         "epochs", "batch_size", "grad_accum", "max_steps", "optim.lr", "dual.lam0", "dual.lr", "dual.eps",
         "dual.eps_alpha", "seed", "eval.enabled"),
    ),
    "finetune": (
        _TRAIN_HELP,
        ("model.name_or_path", "model.dtype", "data.source", "data.train_split", "epochs", "batch_size",
         "grad_accum", "max_steps", "optim.lr", "seed", "eval.enabled"),
    ),
    "eval": (_EVAL_HELP, tuple(_EVAL_HELP)),
    "plan": (
        _TRAIN_HELP,
        ("model.name_or_path", "model.dtype", "model.param_dtype", "model.remat", "method", "batch_size",
         "grad_accum", "data.max_length", "mesh.shape"),
    ),
}  # fmt: skip
# Flags (not config fields) of the model-only commands, with their defaults from absl, and an example.
COMMAND_FLAGS = {
    "generate": (
        {
            "model": "HF folder, hub name or alias",
            "prompt": "a question; repeat the flag for several",
            "max_new_tokens": "generation budget",
            "dtype": "compute dtype: float32 | bfloat16",
        },
        "cel-jax generate --model=/tmp/cel_demo/model --prompt='Where was Marisol Quenby born?'",
    ),
    "export": (
        {"model": "HF folder, hub name or alias", "out": "output folder (required)"},
        "cel-jax export --model=smollm2-135m-instruct --out=/tmp/smollm2",
    ),
}


def default_config(command: str):
    """The config a command's --help describes when no --config is given."""
    if command == "eval":
        from cel_jax.evaluation.tofu import default_config as tofu_default

        return tofu_default(), "cel_jax.evaluation.tofu.default_config()"
    from cel_jax import config_base

    if command == "finetune":
        return config_base.finetune_config(), "cel_jax.config_base.finetune_config()"
    return config_base.unlearn_config(), "cel_jax.config_base.unlearn_config()"


def _fmt(value: Any, width: int = 24) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def top_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: cel-jax <command> [--config=FILE] [--workdir=DIR] [--config.KEY=VALUE ...] [--verbose]",
        "",
        "Constrained unlearning of LLMs in JAX/Flax.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {desc}" for name, (desc, _, _) in COMMANDS.items()),
        "",
        "flags:",
        "  --config=FILE        a configs/*.py file (unlearn, finetune, eval, plan); FILE:ARG passes ARG",
        "  --config.KEY=VALUE   override one field of that config, e.g. --config.optim.lr=2e-5",
        "  --workdir=DIR        checkpoints, metrics and results (local or gs://)",
        "  --verbose            tracebacks and library INFO logs (or CEL_JAX_VERBOSE=1)",
        "",
        "examples:",
        "  cel-jax unlearn --config=configs/demo.py --workdir=/tmp/cel_demo",
        "  cel-jax eval --config=configs/eval/tofu.py --config.model=/tmp/cel_demo/model --workdir=/tmp/ev",
        "  cel-jax generate --prompt='What is the capital of France?'",
        "",
        "cel-jax <command> --help: that command's flags and config fields. Environment: docs/environment.md",
    ]
    return "\n".join(lines)


def command_help(command: str, cfg=None, source: str | None = None, flag_values=None) -> str:
    """Help of one command; `cfg`/`source`: the config whose values to show (config commands)."""
    desc, needs_config, example = COMMANDS[command]
    if not needs_config:
        described, example = COMMAND_FLAGS[command]
        lines = [f"usage: cel-jax {command} [flags] [--verbose]", "", desc[0].upper() + desc[1:] + ".", ""]
        for name, text in described.items():
            f = flag_values[name] if flag_values is not None and name in flag_values else None
            shown = f is not None and f.default not in (None, [])
            lines.append(f"  --{name:<16} {text}" + (f" (default {_fmt(f.default, 40)})" if shown else ""))
        return "\n".join([*lines, "", f"example: {example}"])
    workdir = {"plan": "", "eval": " --workdir=DIR"}.get(command, " --workdir=DIR")
    lines = [
        f"usage: cel-jax {command} --config=FILE{workdir} [--config.KEY=VALUE ...] [--verbose]",
        "",
        desc[0].upper() + desc[1:] + ".",
        "",
        f"  --config=FILE     required, e.g. {example}",
    ]
    if command in ("unlearn", "finetune"):
        lines.append("  --workdir=DIR     required: checkpoints, metrics.jsonl, model/ (a rerun resumes)")
    elif command == "eval":
        lines.append("  --workdir=DIR     required: <NAME>_EVAL.json and <NAME>_SUMMARY.json go there")
    if cfg is None:
        cfg, source = default_config(command)
    described, keys = CONFIG_FIELDS[command]
    rows = []
    for key in keys:
        try:
            value = value_at(cfg, key)
        except KeyError:
            continue
        rows.append((key, _fmt(value), described.get(key, "")))
    lines += ["", f"--config.KEY=VALUE, common keys (values of {source}):"]
    kw, vw = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines += [f"  {k:<{kw}}  {v:<{vw}}  {t}".rstrip() for k, v, t in rows]
    lines += [
        "",
        *([f"methods: {_method_names()}"] if "method" in keys else []),
        "Every other field of the config file works the same way; none unsets a placeholder field.",
        f"example: cel-jax {command} --config={example}{workdir.replace('DIR', '/tmp/run')}",
    ]
    return "\n".join(lines)


def _method_names() -> str:
    try:
        from cel_jax.unlearning.methods import METHODS

        return ", ".join(sorted(METHODS))
    except Exception:  # help must not fail on an import
        return "see cel_jax/unlearning/methods.py"
