"""The `cel-jax` command line's own logic, free of absl global state (so it can be unit-tested):
argv scanning, checking `--config.KEY` overrides against the config file before absl parses them,
`none` for placeholder fields, mutually exclusive fields, quiet logging and environment."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ml_collections import config_dict

from cel_jax.errors import UserError

# name: (one-line description, needs --config, example config file)
_UNLEARN = "unlearn a forget set, keeping the retain loss <= ε (PDU and baselines)"
_EVAL = "evaluate a model on TOFU or MUSE (writes <NAME>_EVAL.json and _SUMMARY.json)"
_FINETUNE = "fine-tune a model on a data set (e.g. the TOFU target)"
_PLAN = "print the per-device memory table of a config (loads no weights)"
COMMANDS: dict[str, tuple[str, bool, str | None]] = {
    "unlearn": (_UNLEARN, True, "configs/demo.py"),
    "finetune": (_FINETUNE, True, "configs/tofu_smollm2_finetune.py"),
    "eval": (_EVAL, True, "configs/eval/tofu.py"),
    "plan": (_PLAN, True, "configs/tofu_llama3_1_8b.py"),
    "generate": ("answer prompts with a model (chat template applied)", False, None),
    "export": ("save a model (folder, hub name or alias) as a Hugging Face folder", False, None),
}

HELP_TOKENS = ("-h", "--help", "-help", "--helpshort", "-helpshort", "-?")
ABSL_HELP_TOKENS = ("--helpfull", "-helpfull", "--helpxml", "-helpxml")  # absl's own: every flag
TRUE = ("1", "true", "yes", "on")

# Mutually exclusive fields: giving one on the command line clears the other (unless both are given).
EXCLUSIVE = (("dual.eps", "dual.eps_alpha"),)


# ------------------------------------------------------------------------------------------ argv scanning
def verbose_requested(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> bool:
    """--verbose / --verbose=true on the command line, or CEL_JAX_VERBOSE=1 (a later --noverbose wins)."""
    verbose = environ.get("CEL_JAX_VERBOSE", "").strip().lower() in TRUE
    for tok in _flag_tokens(argv):
        m = re.fullmatch(r"--?(no)?verbose(?:=(.*))?", tok)
        if m:
            verbose = not m.group(1) and (m.group(2) is None or m.group(2).lower() in TRUE)
    return verbose


def verbosity_given(argv: Sequence[str]) -> bool:
    """Whether the user chose absl's logging verbosity (-v / --verbosity) themselves."""
    return any(re.match(r"--?(v|verbosity)(=|$)", tok) for tok in _flag_tokens(argv))


def wants_help(argv: Sequence[str]) -> bool:
    return any(tok in HELP_TOKENS for tok in _flag_tokens(argv))


def _flag_tokens(argv: Sequence[str]) -> list[str]:
    out = []
    for tok in argv[1:]:
        if tok == "--":
            break
        out.append(tok)
    return out


def positionals(argv: Sequence[str], takes_value: Callable[[str], bool]) -> list[str]:
    """Non-flag arguments; `takes_value(name)` says whether `--name VALUE` (no '=') consumes VALUE."""
    out, i = [], 1
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i + 1 :])
            break
        if tok.startswith("-") and len(tok) > 1:
            name = tok.lstrip("-")
            if "=" not in name and i + 1 < len(argv):
                nxt = argv[i + 1]
                if name.startswith("config.") or name.startswith("noconfig."):
                    consume = not name.startswith("no") and not nxt.startswith("-") and nxt not in COMMANDS
                else:
                    consume = takes_value(name)
                i += consume
        else:
            out.append(tok)
        i += 1
    return out


def split_command(argv: Sequence[str], takes_value: Callable[[str], bool]) -> tuple[str | None, list[str]]:
    """(command, other positionals): the first positional that is a command (or `help`), else the first."""
    pos = positionals(argv, takes_value)
    for i, tok in enumerate(pos):
        if tok in COMMANDS or tok == "help":
            return tok, pos[:i] + pos[i + 1 :]
    return (pos[0], pos[1:]) if pos else (None, [])


def config_arg(argv: Sequence[str]) -> str | None:
    """The value of --config (last one wins, like absl), or None."""
    value, toks = None, _flag_tokens(argv)
    for i, tok in enumerate(toks):
        m = re.fullmatch(r"--?config(?:=(.*))?", tok, flags=re.S)
        if m:
            value = m.group(1) if m.group(1) is not None else (toks[i + 1] if i + 1 < len(toks) else "")
    return value


_OVERRIDE = re.compile(r"--?(no)?config\.([^=]+)(?:=(.*))?", flags=re.S)


def config_overrides(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """(key, value) of every --config.KEY[=VALUE] in order; value None when not given inline."""
    out, toks = [], _flag_tokens(argv)
    for i, tok in enumerate(toks):
        m = _OVERRIDE.fullmatch(tok)
        if not m:
            continue
        value = m.group(3)
        if value is None and not m.group(1) and i + 1 < len(toks) and not toks[i + 1].startswith("-"):
            value = toks[i + 1]
        out.append((m.group(2), value))
    return out


# ------------------------------------------------------------------------------------------ config files
def load_config_file(spec: str):
    """`get_config()` of a configs/*.py file ("FILE:ARG" passes ARG), as ml_collections' --config does."""
    path, _, arg = spec.partition(":")
    if not path:
        raise UserError("--config needs a file, e.g. --config=configs/demo.py")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"config file {path!r} not found" + (" (it is a folder)" if p.is_dir() else ""))
    module_spec = importlib.util.spec_from_file_location(f"_cel_jax_cli_config_{p.stem}", p)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"config file {path!r} is not a python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"config file {path!r} defines no get_config()")
    cfg = module.get_config(arg) if arg else module.get_config()
    if not isinstance(cfg, config_dict.ConfigDict):
        raise UserError(f"{path}: get_config() returned {type(cfg).__name__}, not a ConfigDict")
    return cfg


def flat_keys(cfg, prefix: str = "") -> list[str]:
    """Every field and section of a ConfigDict as a dotted path ("dual", "dual.eps", ...)."""
    out = []
    for k in sorted(cfg.keys()):
        path = f"{prefix}{k}"
        out.append(path)
        v = cfg[k]
        if isinstance(v, config_dict.ConfigDict):
            out.extend(flat_keys(v, path + "."))
    return out


def _lookup(cfg, key: str):
    """(holder ConfigDict, field name) of dotted `key`; KeyError when some part does not exist."""
    node, parts = cfg, [re.sub(r"\[.*$", "", p) for p in key.split(".")]
    for part in parts[:-1]:
        if not isinstance(node, config_dict.ConfigDict) or part not in node:
            raise KeyError(key)
        node = node[part]
    if not isinstance(node, config_dict.ConfigDict) or parts[-1] not in node:
        raise KeyError(key)
    return node, parts[-1]


def suggest(key: str, keys: Sequence[str], n: int = 3) -> list[str]:
    """Closest valid keys: a close name in the same section (or, when the section itself is wrong, a close
    dotted path), then fields with the same name in other sections."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    if siblings or not parent:
        names = {k.rpartition(".")[2]: k for k in siblings}
        out = [names[m] for m in difflib.get_close_matches(leaf, list(names), n=n, cutoff=0.6)]
    else:  # a misspelt section: the same field in a close section first
        same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
        out = difflib.get_close_matches(key, same_leaf, n=n, cutoff=0.6)
        out = out or difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    out += [k for k in keys if k.rpartition(".")[2] == leaf and k not in out]
    return out[:n]


def check_override_keys(
    cfg, keys: Iterable[str], source: str = "the config", command: str = "<command>"
) -> None:
    """UserError naming the first unknown key and the closest valid ones (absl would raise AttributeError)."""
    for key in keys:
        try:
            _lookup(cfg, key)
            continue
        except KeyError:
            pass
        parent = key.rpartition(".")[0]
        try:
            holder, name = _lookup(cfg, parent) if parent else (None, None)
            node = holder[name] if holder is not None else cfg
        except KeyError:
            node = None
        near = suggest(key, flat_keys(cfg))
        if isinstance(node, config_dict.ConfigDict) and not node.keys():
            hint = f"{parent} has no fields in {source}: add them there"
        elif node is not None and not isinstance(node, config_dict.ConfigDict):
            hint = f"{parent} is a {type(node).__name__}, not a section"
        elif near:
            hint = f"did you mean {' or '.join(repr(k) for k in near)}?"
        else:
            hint = f"not in {source}; cel-jax {command} --help lists the common keys"
        raise UserError(f"unknown config key {key!r} ({hint})")


def is_nullable(cfg, key: str) -> bool:
    """Whether `key` may be None: a placeholder field (config_dict.placeholder) or one that is None now."""
    holder, name = _lookup(cfg, key)
    field = holder._fields.get(name)  # the FieldReference of a placeholder (no public accessor)
    return isinstance(field, config_dict.FieldReference) or holder[name] is None


def take_none_overrides(argv: Sequence[str], cfg) -> tuple[list[str], list[str]]:
    """Remove `--config.KEY=none` (any case) for nullable KEYs from argv, which absl's typed parsers reject;
    returns (argv without them, KEYs to set to None after parsing: those whose last value is none)."""
    last: dict[str, bool] = {}
    strip = set()
    for key, value in config_overrides(argv):
        is_none = value is not None and value.strip().lower() == "none"
        last[key] = is_none
        if not is_none:
            continue
        if is_nullable(cfg, key):
            strip.add(key)
        elif not isinstance(value_at(cfg, key), str):  # a str field takes the string "none"
            raise UserError(
                f"config key {key!r} cannot be None (it is a {type(value_at(cfg, key)).__name__})"
            )
    if not strip:
        return list(argv), []
    out, i, n = [argv[0]], 1, len(argv)
    while i < n:
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i:])
            break
        m = _OVERRIDE.fullmatch(tok)
        if m and not m.group(1) and m.group(2) in strip:
            value = m.group(3) if m.group(3) is not None else (argv[i + 1] if i + 1 < n else "")
            if value.strip().lower() == "none":
                i += 1 if m.group(3) is not None else 2
                continue
        out.append(tok)
        i += 1
    return out, sorted(k for k in strip if last[k])


def value_at(cfg, key: str):
    holder, name = _lookup(cfg, key)
    return holder[name]


def set_none(cfg, keys: Iterable[str]) -> None:
    for key in keys:
        holder, name = _lookup(cfg, key)
        holder[name] = None


def resolve_exclusive(cfg, given: Iterable[str], pairs=EXCLUSIVE) -> list[str]:
    """The field given on the command line wins: giving `dual.eps` (not None) clears `dual.eps_alpha`
    unless that is given too, and vice versa. Returns the keys set to None."""
    given = set(given)
    cleared = []
    for a, b in pairs:
        for mine, other in ((a, b), (b, a)):
            if mine not in given or other in given:
                continue
            try:
                if value_at(cfg, mine) is None or value_at(cfg, other) is None:
                    continue
            except KeyError:  # this config has no such fields
                continue
            set_none(cfg, [other])
            cleared.append(other)
    return cleared


# ------------------------------------------------------------------------------------------ quiet output
def quiet_environment(verbose: bool, environ: dict | None = None) -> None:
    """Environment switches that must be set before the libraries are imported: transformers' advisory
    warnings ("PyTorch was not found ...") off unless verbose. The user's own settings win."""
    env = os.environ if environ is None else environ
    if not verbose:
        env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_logging(verbose: bool, argv: Sequence[str]) -> None:
    """absl and python logging at WARNING: no Orbax INFO lines between the progress bar's updates, no
    JAX 'Unable to initialize backend' INFO line. Left alone with --verbose or an explicit -v/--verbosity."""
    if verbose or verbosity_given(argv):
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # root logger when absl's handler is installed
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def xla_cache_dir() -> str:
    """Folder of the persistent XLA compilation cache: CEL_JAX_XLA_CACHE ("" disables the cache), else
    $CEL_JAX_CACHE/xla (default ~/.cache/cel_jax/xla), next to the embedded model's cache."""
    if "CEL_JAX_XLA_CACHE" in os.environ:
        return os.environ["CEL_JAX_XLA_CACHE"]
    from cel_jax.model.embedded import cache_dir

    return str(cache_dir() / "xla")


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
