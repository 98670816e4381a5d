"""The `cel-jax` command line: help, one-line user errors (exit 2), --config.* checks, none values,
dual.eps / dual.eps_alpha precedence, quiet output, cache folders. Pure functions in-process; a few
subprocesses (each pays the ~2-10 s import) for what only the real entry point shows."""

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from cel_jax import errors
from cel_jax.cli import flags as cli
from cel_jax.cli import help as cli_help
from cel_jax.config_base import authors_dual, finetune_config, unlearn_config


def _cli(*args, env=None, timeout=300):
    """`python -m cel_jax.cli.main ARGS` in the repository root; JAX_PLATFORMS left unset (as users have)."""
    e = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "CEL_JAX_VERBOSE")}
    e.update(env or {})
    cmd = [sys.executable, "-m", "cel_jax.cli.main", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def _lines(text):
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def rel_config(tmp_path_factory):
    """An unlearn config with a relative ε (eps None, eps_alpha set), independent of configs/ edits."""
    p = tmp_path_factory.mktemp("cfg") / "rel.py"
    p.write_text(
        textwrap.dedent(
            """
            from cel_jax.config_base import unlearn_config

            def get_config():
                c = unlearn_config()
                c.data.source = "demo"
                c.data.forget_split = "forget"
                c.data.retain_split = "retain"
                c.mesh.shape = (1, 1, 1)
                c.dual.eps = None
                c.dual.eps_alpha = 0.25
                return c
            """
        )
    )
    return p


# --------------------------------------------------------------------------------------- subprocesses
def test_help_of_every_command_exits_0():
    """One process drives the real entry point for every help form (help never parses absl flags)."""
    forms = [["--help"], ["-h"], ["help"], ["help", "unlearn"], []]
    forms += [[c, "--help"] for c in cli.COMMANDS]
    forms += [["unlearn", "--help", "--config=configs/tiny.py"]]
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from cel_jax.cli.main import run
        out = []
        for form in {forms!r}:
            o, e = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
                try:
                    run(["cel-jax", *form])
                    code = 0
                except SystemExit as x:
                    code = x.code
            out.append((form, code, o.getvalue(), e.getvalue()))
        print("JSON" + json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    p = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.split("JSON", 1)[1])
    by_form = {tuple(f): (code, out, err) for f, code, out, err in results}
    for form, (code, out, err) in by_form.items():
        if form == ():
            assert code == 2 and "commands:" in err and not out  # no command: usage on stderr, exit 2
            continue
        assert code == 0, (form, err)
        assert not err.strip(), (form, err)
        assert len(out.splitlines()) <= 40, form  # one screen
    top = by_form[("--help",)][1]
    assert by_form[("-h",)][1] == by_form[("help",)][1] == top
    for name, (desc, _, _) in cli.COMMANDS.items():
        assert f"  {name}" in top and desc in top
    assert "--config=FILE" in top and "--config.KEY=VALUE" in top
    unlearn = by_form[("unlearn", "--help")][1]
    assert by_form[("help", "unlearn")][1] == unlearn
    assert "optim.lr" in unlearn and repr(unlearn_config().optim.lr) in unlearn
    assert "dual.eps_alpha" in unlearn and "methods: " in unlearn
    tiny = by_form[("unlearn", "--help", "--config=configs/tiny.py")][1]
    lr = cli.load_config_file(str(ROOT / "configs" / "tiny.py")).optim.lr
    assert "values of configs/tiny.py" in tiny and re.search(rf"optim\.lr +{re.escape(repr(lr))} ", tiny)
    assert "--out" in by_form[("export", "--help")][1]
    assert "--prompt" in by_form[("generate", "--help")][1]
    assert "data_dir" in by_form[("eval", "--help")][1]


def test_unknown_config_key_is_one_line_with_the_closest_key(tmp_path):
    p = _cli("unlearn", "--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.dual.lrr=3")
    assert p.returncode == 2
    assert _lines(p.stderr) == ["error: unknown config key 'dual.lrr' (did you mean 'dual.lr'?)"]


def test_negative_lr_fails_in_validation_and_eps_on_the_command_line_wins(rel_config, tmp_path):
    """--config.dual.eps on a config with eps_alpha: eps_alpha is cleared (else 'not both' would be the
    error), and the negative learning rate is then reported in one line, without a traceback."""
    args = ["unlearn", f"--config={rel_config}", f"--workdir={tmp_path}", "--config.dual.eps=0.5"]
    p = _cli(*args, "--config.optim.lr=-1")
    assert p.returncode == 2
    (line,) = _lines(p.stderr)
    assert line.startswith("error: optim.lr must be a positive number")
    assert "Traceback" not in p.stdout + p.stderr


def test_none_clears_a_placeholder_from_the_command_line(rel_config, tmp_path):
    p = _cli("unlearn", f"--config={rel_config}", f"--workdir={tmp_path}", "--config.dual.eps_alpha=None")
    assert p.returncode == 2
    (line,) = _lines(p.stderr)
    assert line.startswith("error: ") and "dual.eps" in line and "eps_alpha" in line  # neither ε is set


def test_missing_model_folder_one_line_and_quiet(tmp_path):
    """The backend is initialised (validation counts devices) before the model is resolved: no JAX
    'Unable to initialize backend' INFO line, no Orbax/absl INFO, no traceback: exactly the error."""
    args = ["unlearn", "--config=configs/tiny.py", f"--workdir={tmp_path}"]
    p = _cli(*args, f"--config.model.name_or_path={tmp_path / 'no_model'}")
    assert p.returncode == 2
    assert _lines(p.stderr) == [
        f"error: model folder {tmp_path / 'no_model'} does not exist {errors.VERBOSE_HINT}"
    ]


def test_verbose_shows_the_traceback(tmp_path):
    args = ["unlearn", "--config=configs/tiny.py", f"--workdir={tmp_path}"]
    p = _cli(*args, f"--config.model.name_or_path={tmp_path / 'no_model'}", env={"CEL_JAX_VERBOSE": "1"})
    assert p.returncode == 2
    assert "Traceback (most recent call last)" in p.stderr
    assert _lines(p.stderr)[-1] == f"error: model folder {tmp_path / 'no_model'} does not exist"


# --------------------------------------------------------------------------------------- pure functions
def test_eps_and_eps_alpha_the_one_given_wins():
    c = unlearn_config()
    c.dual.eps, c.dual.eps_alpha = None, 0.25
    c.dual.eps = 0.5  # --config.dual.eps=0.5
    assert cli.resolve_exclusive(c, ["dual.eps"]) == ["dual.eps_alpha"]
    assert c.dual.eps == 0.5 and c.dual.eps_alpha is None

    c = unlearn_config()
    c.dual = authors_dual()  # eps 0.3
    c.dual.eps_alpha = 0.1  # --config.dual.eps_alpha=0.1
    assert cli.resolve_exclusive(c, ["dual.eps_alpha", "optim.lr"]) == ["dual.eps"]
    assert c.dual.eps is None and c.dual.eps_alpha == 0.1

    c = unlearn_config()
    c.dual = authors_dual()
    c.dual.eps_alpha = 0.1  # both given explicitly: left to validation ("not both")
    assert cli.resolve_exclusive(c, ["dual.eps_alpha", "dual.eps"]) == []
    assert c.dual.eps == 0.3 and c.dual.eps_alpha == 0.1

    c = finetune_config()  # neither given, or the given one is None: nothing changes
    assert cli.resolve_exclusive(c, []) == [] and cli.resolve_exclusive(c, ["dual.eps_alpha"]) == []
    from cel_jax.evaluation.tofu import default_config

    assert cli.resolve_exclusive(default_config(), ["dual.eps"]) == []  # no dual section at all


def test_none_values_for_placeholder_fields():
    c = unlearn_config()
    c.lock()
    argv = [
        "cel-jax",
        "unlearn",
        "--config.dual.eps_alpha=None",
        "--config.max_steps",
        "none",
        "--config.model.remat=none",  # a plain string field: the string "none"
        "--config.dual.lam_max=NONE",
        "--config.dual.lam_max=2.0",  # the last value of a key wins
    ]
    out, nones = cli.take_none_overrides(argv, c)
    assert nones == ["dual.eps_alpha", "max_steps"]
    assert out == ["cel-jax", "unlearn", "--config.model.remat=none", "--config.dual.lam_max=2.0"]
    cli.set_none(c, nones)
    assert c.max_steps is None and c.dual.eps_alpha is None
    c.max_steps = 3  # still an int field afterwards
    with pytest.raises(errors.UserError, match="'optim.lr' cannot be None"):
        cli.take_none_overrides(["cel-jax", "--config.optim.lr=none"], c)


def test_unknown_keys_name_the_closest_valid_ones():
    c = unlearn_config()
    cli.check_override_keys(c, ["dual.eps", "optim.lr", "mesh.shape", "mesh.shape[0]", "method_args"])
    cases = {
        "dual.lrr": "(did you mean 'dual.lr'?)",
        "batchsize": "did you mean 'batch_size'?",
        "lr": "'optim.lr'",
        "optm.lr": "did you mean 'optim.lr'",
        "method_args.beta": "method_args has no fields in c.py",
        "optim.lr.x": "optim.lr is a float, not a section",
        "nonexistent_key": "not in c.py; cel-jax unlearn --help",
    }
    for key, hint in cases.items():
        with pytest.raises(errors.UserError) as e:
            cli.check_override_keys(c, [key], source="c.py", command="unlearn")
        assert str(e.value).startswith(f"unknown config key {key!r} (") and hint in str(e.value), str(e.value)


def test_argv_scanning():
    takes = {"config", "workdir", "model"}.__contains__
    assert cli.split_command(["cel-jax", "--config", "c.py", "unlearn", "--workdir", "w"], takes) == (
        "unlearn",
        [],
    )
    assert cli.split_command(["cel-jax", "--config.epochs", "3", "eval"], takes)[0] == "eval"
    assert cli.split_command(["cel-jax", "unlern"], takes) == ("unlern", [])
    assert cli.split_command(["cel-jax", "--workdir=w"], takes) == (None, [])
    assert cli.config_arg(["cel-jax", "--config", "a.py", "--config=b.py:x"]) == "b.py:x"
    assert cli.config_arg(["cel-jax", "unlearn"]) is None
    over = [
        "cel-jax",
        "--config.a.b=1",
        "--config.c",
        "2",
        "--noconfig.d",
        "--config.e=x=y",
        "--",
        "--config.f=1",
    ]
    assert cli.config_overrides(over) == [("a.b", "1"), ("c", "2"), ("d", None), ("e", "x=y")]
    assert cli.verbose_requested(["cel-jax", "--verbose"], {}) is True
    assert cli.verbose_requested(["cel-jax"], {"CEL_JAX_VERBOSE": "1"}) is True
    assert cli.verbose_requested(["cel-jax", "--noverbose"], {"CEL_JAX_VERBOSE": "1"}) is False
    assert cli.verbose_requested(["cel-jax", "--verbose=false"], {}) is False
    assert cli.verbose_requested(["cel-jax"], {"CEL_JAX_VERBOSE": "0"}) is False
    assert cli.wants_help(["cel-jax", "unlearn", "-h"]) and not cli.wants_help(["cel-jax", "--", "-h"])
    assert cli.verbosity_given(["cel-jax", "-v=1"]) and not cli.verbosity_given(["cel-jax", "--verbose"])


def test_error_lines():
    buf = io.StringIO()
    assert errors.report(ValueError("bad\n  value"), verbose=False, file=buf) == 2
    assert buf.getvalue() == f"error: bad value {errors.VERBOSE_HINT}\n"
    buf = io.StringIO()
    errors.report(errors.UserError("unknown config key 'x'"), verbose=False, file=buf)
    assert buf.getvalue() == "error: unknown config key 'x'\n"
    wrapped = ValueError(
        "Error whilst parsing config file:\n\nTraceback (most recent call last):\n  ...\nValueError: boom"
    )
    assert errors.one_line(wrapped) == "ValueError: boom"
    assert errors.one_line(FileNotFoundError(2, "No such file or directory", "x.jsonl")) == (
        "No such file or directory: x.jsonl"
    )
    try:
        raise ValueError("deep")
    except ValueError as e:
        buf = io.StringIO()
        errors.report(e, verbose=True, file=buf)
    assert "Traceback" in buf.getvalue() and buf.getvalue().endswith("error: deep\n")


def test_xla_cache_follows_cel_jax_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("CEL_JAX_XLA_CACHE", raising=False)
    monkeypatch.setenv("CEL_JAX_CACHE", str(tmp_path / "c"))
    assert cli.xla_cache_dir() == str(tmp_path / "c" / "xla")
    monkeypatch.delenv("CEL_JAX_CACHE")
    assert cli.xla_cache_dir() == os.path.expanduser("~/.cache/cel_jax/xla")
    monkeypatch.setenv("CEL_JAX_XLA_CACHE", str(tmp_path / "x"))
    assert cli.xla_cache_dir() == str(tmp_path / "x")
    monkeypatch.setenv("CEL_JAX_XLA_CACHE", "")
    assert cli.xla_cache_dir() == ""  # disabled


def test_quiet_environment_and_logging():
    env = {}
    cli.quiet_environment(False, env)
    assert env == {"TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    env = {"TRANSFORMERS_NO_ADVISORY_WARNINGS": "0"}
    cli.quiet_environment(False, env)  # the user's choice stays
    assert env["TRANSFORMERS_NO_ADVISORY_WARNINGS"] == "0"
    env = {}
    cli.quiet_environment(True, env)
    assert env == {}

    from absl import logging as absl_logging

    names = ("", "absl", "orbax", "jax._src.xla_bridge")
    saved = {n: logging.getLogger(n).level for n in names}
    saved_verbosity = absl_logging.get_verbosity()
    try:
        cli.quiet_logging(False, ["cel-jax", "unlearn"])
        for n in ("absl", "orbax", "jax._src.xla_bridge"):
            assert not logging.getLogger(n).isEnabledFor(logging.INFO), n
        assert logging.getLogger("absl").isEnabledFor(logging.WARNING)
        for n in names:
            logging.getLogger(n).setLevel(logging.INFO)
        cli.quiet_logging(False, ["cel-jax", "unlearn", "--verbosity=0"])  # the user's -v is kept
        cli.quiet_logging(True, ["cel-jax", "unlearn"])
        assert logging.getLogger("orbax").isEnabledFor(logging.INFO)
    finally:
        absl_logging.set_verbosity(saved_verbosity)
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def test_help_texts_fit_one_screen():
    assert len(cli_help.top_help().splitlines()) <= 30
    for name in cli.COMMANDS:
        text = cli_help.command_help(name)
        assert len(text.splitlines()) <= 40, name
        assert max(map(len, text.splitlines())) <= 110, name
