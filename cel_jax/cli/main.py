"""`cel-jax` command line: absl flags + ml-collections config files with `--config.key=value` overrides.

cel-jax generate --model=smollm2-135m-instruct --prompt="What is the capital of France?"
cel-jax export   --model=DIR_OR_ALIAS --out=DIR
cel-jax finetune --config=configs/tofu_smollm2_finetune.py --workdir=DIR [--config.key=value ...]
cel-jax unlearn  --config=configs/demo.py --workdir=DIR [--config.key=value ...]
cel-jax eval     --config=configs/eval/tofu.py --config.model=DIR --workdir=DIR
cel-jax plan     --config=configs/tofu_llama3_1_8b.py

`cel-jax --help`, `cel-jax <command> --help`: commands, flags, common config fields (cel_jax/cli/flags.py).
Bad input (flag, config key or value, data, path) prints one `error: ...` line and exits 2 before anything
is compiled; --verbose (or CEL_JAX_VERBOSE=1) adds the traceback and the libraries' INFO logs.
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags
from ml_collections import config_flags

from cel_jax import errors
from cel_jax.cli import flags as cli
from cel_jax.cli import help as cli_help

COMMANDS = {
    # name: (module, function, needs --config)
    "generate": ("cel_jax.cli.commands", "generate", False),
    "export": ("cel_jax.cli.commands", "export", False),
    "finetune": ("cel_jax.training.train", "finetune_command", True),
    "unlearn": ("cel_jax.training.train", "unlearn_command", True),
    "eval": ("cel_jax.evaluation.driver", "eval_command", True),
    "plan": ("cel_jax.scale.plan_table", "plan_command", True),
}
_NEEDS_WORKDIR = ("finetune", "unlearn", "eval")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory (checkpoints, metrics, results); local or gs://.")
flags.DEFINE_string("model", "smollm2-135m-instruct", "HF folder, hub name or alias.")
flags.DEFINE_multi_string("prompt", [], "Prompt (repeatable; chat template applied).")
flags.DEFINE_string("out", None, "Output folder (required).")
flags.DEFINE_integer("max_new_tokens", 200, "Generation budget.")
flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
flags.DEFINE_boolean("verbose", False, "Tracebacks, libraries' INFO logs (or CEL_JAX_VERBOSE=1).")
FLAGS = flags.FLAGS

# What the pre-parse found (run -> main): fields to set to None, the --config.* keys given.
_STATE: dict = {"verbose": False, "nones": [], "given": []}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:  # run() already checked the command; extra words here
        raise errors.UserError(
            f"unexpected argument(s) {' '.join(argv[2:])!r}; flags take the form --name=value"
        )
    name = argv[1]
    module, fn, _ = COMMANDS[name]
    if name in _NEEDS_WORKDIR and not FLAGS.workdir:
        raise errors.UserError(f"`cel-jax {name}` needs --workdir=DIR (see cel-jax {name} --help)")
    config = _CONFIG.value
    if config is not None:
        cli.set_none(config, _STATE["nones"])
        cli.resolve_exclusive(config, _STATE["given"])
    cli.quiet_logging(_STATE["verbose"] or FLAGS.verbose, sys.argv)
    import jax

    jax.config.config_with_absl()
    compilation_cache(jax)
    func = getattr(importlib.import_module(module), fn)
    return func(config, FLAGS)


def compilation_cache(jax) -> str:
    """Persistent XLA cache: a rerun of the same job skips compilation (cli.xla_cache_dir; "" disables)."""
    path = cli.xla_cache_dir()
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    return path


def _takes_value(name: str) -> bool:
    return name in FLAGS and not FLAGS[name].boolean


def _preflight(argv: list[str]) -> list[str]:
    """Help, the command, and the --config.* overrides checked against the config file, before absl parses
    them (absl would fail on an unknown key with a 60-line AttributeError). Returns the argv for absl."""
    if any(tok in cli.ABSL_HELP_TOKENS for tok in argv[1:]):
        return argv  # absl prints all its flags and exits
    command, _ = cli.split_command(argv, _takes_value)
    if command == "help":  # `cel-jax help [command]`
        rest = [p for p in cli.positionals(argv, _takes_value) if p != "help"]
        command = rest[0] if rest else None
        argv = [*argv, "--help"]
    if cli.wants_help(argv):
        print(_help(command, argv))
        sys.exit(0)
    if command is None:
        cli.stderr(cli_help.top_help())
        sys.exit(errors.EXIT_USER_ERROR)
    if command not in COMMANDS:
        near = cli.suggest(command, list(COMMANDS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise errors.UserError(f"unknown command {command!r} ({hint}commands: {', '.join(COMMANDS)})")
    path = cli.config_arg(argv)
    overrides = cli.config_overrides(argv)
    if path is None:
        if COMMANDS[command][2]:
            example = cli.COMMANDS[command][2]
            raise errors.UserError(f"`cel-jax {command}` needs --config=FILE (e.g. --config={example})")
        if overrides:
            raise errors.UserError(f"--config.{overrides[0][0]} given without --config=FILE")
        return argv
    cfg = cli.load_config_file(path)
    cli.check_override_keys(cfg, [k for k, _ in overrides], source=path, command=command)
    argv, nones = cli.take_none_overrides(argv, cfg)
    _STATE.update(nones=nones, given=[k for k, _ in overrides])
    return argv


def _help(command: str | None, argv: list[str]) -> str:
    if command is None:
        return cli_help.top_help()
    if command not in COMMANDS:
        raise errors.UserError(f"unknown command {command!r} (commands: {', '.join(COMMANDS)})")
    path = cli.config_arg(argv)
    cfg = cli.load_config_file(path) if path and COMMANDS[command][2] else None
    return cli_help.command_help(command, cfg, path, FLAGS)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parse, its errors (bad value, unknown flag) as one line instead of a usage dump."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        msg = errors.one_line(e)
        raise errors.UserError(msg[5:] if msg.startswith("flag ") else msg) from e


def run(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    verbose = cli.verbose_requested(argv)
    _STATE["verbose"] = verbose
    cli.quiet_environment(verbose)  # before transformers is imported
    try:
        argv = _preflight(argv)
        sys.argv = argv  # ml_collections reads the --config.* overrides from sys.argv
        app.run(main, argv=argv, flags_parser=_parse_flags)
    except errors.USER_ERRORS as e:
        sys.exit(errors.report(e, verbose or bool(FLAGS.is_parsed() and FLAGS.verbose)))


if __name__ == "__main__":
    run()
