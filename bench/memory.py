"""`python -m bench.memory`: peak host memory (RSS) of our jobs, per phase.

On the CPU backend JAX "device" buffers are host RAM too, so RSS is the whole story; tracemalloc does not
see XLA buffers. Two modes:

  run      python -m bench.memory run [--phase REGEX ...] [--json OUT] -- COMMAND ARGS...
           Runs COMMAND, samples the RSS of its process tree every --interval s, and prints the peak per
           phase. A phase starts at every output line matching one of the --phase regexes (the whole
           line names it); without --phase there is one phase. The exact peak comes from the kernel
           (wait4's ru_maxrss of the child, what `/usr/bin/time -v` calls "Maximum resident set size");
           the sampled peaks can miss short spikes.

  unlearn  python -m bench.memory unlearn --config configs/demo.py --workdir DIR [--set key=value ...]
           [--patch NAME ...] [--json OUT]
           Runs `cel-jax unlearn` in this process with markers around its parts (model load, examples,
           state, ε, first step = trace + compile, steps, checkpoint saves, export, ...): peak RSS inside
           each phase, RSS when it ends, and the bytes of live JAX arrays at its end. `--patch` applies
           candidate changes of the training code as monkeypatches (see PATCHES), to measure them before
           the code changes.

  eval     python -m bench.memory eval --config configs/eval/tofu.py --workdir DIR [--set key=value ...]
           The same for `cel-jax eval` (model load, then each of the evaluation's metric phases).

Only the standard library (and psutil where installed) is imported for `run`, so the parent adds ~20 MB
and no JAX to what it measures. Nothing here changes the code measured except the named patches.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.rss import Phases, print_table, self_hwm_mb, self_rss_mb, tree_rss_mb

MB = 1 << 20


# ------------------------------------------------------------------------------------------ run mode
def run_command(argv: list[str], phase_res: list[str], interval: float, echo: bool = True) -> dict:
    """Run argv (stdout+stderr merged, echoed), phases from matching output lines; kernel peak via wait4."""
    pats = [re.compile(p) for p in phase_res]
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    ph = Phases(lambda: tree_rss_mb(proc.pid), interval)

    def reader():
        buf = b""
        while chunk := proc.stdout.read(4096):
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for ln in lines:
                s = ln.decode(errors="replace").strip()
                if s and any(p.search(s) for p in pats):
                    ph.mark(s[:80])

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    _, status, ru = os.wait4(proc.pid, 0)
    th.join()
    rows = ph.stop()
    return {
        "argv": argv,
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.time() - t0, 1),
        "max_rss_mb_kernel": round(ru.ru_maxrss / 1024.0),
        "phases": rows,
    }


# ------------------------------------------------------------------------------------- in-process mode
def _live_jax_mb() -> float:
    import jax

    return round(sum(a.nbytes for a in jax.live_arrays() if not a.is_deleted()) / MB)


def _wrap(obj, name: str, ph: Phases, phase: str | None = None, after: str | None = None, once=False):
    """Replace obj.name by a wrapper marking `phase` on entry and `after` on exit."""
    orig = getattr(obj, name)
    calls = {"n": 0}

    @functools.wraps(orig)
    def wrapper(*a, **k):
        calls["n"] += 1
        label = phase or name
        if once and calls["n"] > 1:
            return orig(*a, **k)
        ph.mark(label if calls["n"] == 1 else f"{label} #{calls['n']}")
        try:
            return orig(*a, **k)
        finally:
            ph.mark(after or f"after {label}")
            ph.annotate(live_jax_mb=_live_jax_mb())

    setattr(obj, name, wrapper)
    return orig


# Candidate changes of the training code, as monkeypatches (the code itself is not edited by this bench).
def _patch_clear_caches(train, ph):
    """jax.clear_caches() + gc.collect() after training, before the export/examples/eval (drops the
    compiled step's executable and the tracing caches that pin its constants)."""
    import gc

    import jax

    from cel_jax.training import checkpoint

    orig = checkpoint.finish

    def finish(mgr):
        orig(mgr)
        jax.clear_caches()
        gc.collect()

    checkpoint.finish = finish


def _patch_drop_model(train, ph):
    """No-op marker: the loaded model object shares its arrays with `params` (nnx.split does not copy),
    so dropping it frees nothing; listed so the report can say it was checked."""


PATCHES = {"clear_caches": _patch_clear_caches, "drop_model": _patch_drop_model}


def _load_config(path: str, sets: list[str]):
    import importlib.util

    from ml_collections import config_dict

    spec = importlib.util.spec_from_file_location("bench_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    for s in sets:
        key, val = s.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        try:
            v = json.loads(val)
        except json.JSONDecodeError:
            v = val
        with config_dict.ignore_type() if hasattr(config_dict, "ignore_type") else contextlib.nullcontext():
            node[leaf] = v
    return cfg


def _jax_setup():
    from cel_jax.cli import flags as cli

    cli.quiet_environment(False)  # as `cel-jax` does, before transformers is imported
    cli.quiet_logging(False, [])
    import jax

    from cel_jax.cli import main

    main.compilation_cache(jax)
    return jax


def measure_unlearn(args) -> dict:
    ph = Phases(self_rss_mb, args.interval)
    jax = _jax_setup()
    from cel_jax.evaluation import before_after
    from cel_jax.model import hf_io
    from cel_jax.training import checkpoint, engine, plots, retain_eval, target, train

    cfg = _load_config(args.config, args.set)
    ph.mark("imports done")
    _wrap(hf_io, "load_pretrained", ph, "load model")
    _wrap(target, "ensure_target", ph, "target (fine-tune or cache)")
    _wrap(before_after, "snapshot", ph, "before/after answers (generate)")
    _wrap(engine, "create_state", ph, "create state (AdamW init)")
    _wrap(checkpoint, "restore_latest", ph, "restore latest")
    _wrap(retain_eval, "initial_eps", ph, "eps (retain forward)")
    _wrap(checkpoint, "finish", ph, "checkpoint finish (wait)", after="after training")
    _wrap(hf_io, "save_pretrained", ph, "export model")
    _wrap(plots, "training_curves", ph, "plots")
    # the step's programs are compiled ahead of time, one per batch shape (cel_jax/scale/aot.py)
    from cel_jax.data.train_data import TrainData
    from cel_jax.scale import aot

    orig_compile = aot.Programs.compile

    def compile_(self, batch, hp):
        if aot.shape_key(batch) not in self.by_shape:
            shape = jax.tree.leaves(batch)[0].shape
            ph.mark(f"compile the step for batches {shape} (trace + XLA)", live_jax_mb=_live_jax_mb())
        return orig_compile(self, batch, hp)

    aot.Programs.compile = compile_
    # steps: every next_batch call of the loop starts one step (the ahead-of-time walk is not a step)
    steps = {"n": 0}
    orig_next = TrainData.next_batch

    def next_batch(self, *a, **k):
        if sys._getframe(1).f_code.co_name != "run_batches":
            steps["n"] += 1
            ph.mark(f"step {steps['n']}", live_jax_mb=_live_jax_mb())
        return orig_next(self, *a, **k)

    TrainData.next_batch = next_batch
    orig_save = checkpoint.save

    def save(mgr, step, state, meta, force=False):
        if not (force or checkpoint.due(mgr, step)):
            return orig_save(mgr, step, state, meta, force)
        ph.mark(f"checkpoint save step {step}", live_jax_mb=_live_jax_mb())
        try:
            return orig_save(mgr, step, state, meta, force)
        finally:
            ph.mark(f"step {steps['n']} (after the save)", live_jax_mb=_live_jax_mb())

    checkpoint.save = save
    for p in args.patch:
        PATCHES[p](train, ph)

    out = _run_measured(train.unlearn_command, cfg, args, ph, jax)
    return {**out, "patch": args.patch, "workdir_mb": _du_mb(args.workdir)}


def _run_measured(command, cfg, args, ph, jax) -> dict:
    """Run a `cel-jax` command function in this process; the phases and the process's peak RSS."""

    class Flags:
        workdir = args.workdir

    command(cfg, Flags)
    ph.mark("done")
    rows = ph.stop()
    return {
        "config": args.config,
        "set": args.set,
        "vm_hwm_mb": round(self_hwm_mb()),
        "jax": jax.__version__,
        "phases": rows,
    }


def measure_eval(args) -> dict:
    ph = Phases(self_rss_mb, args.interval)
    jax = _jax_setup()
    from cel_jax.evaluation import driver
    from cel_jax.model import hf_io

    cfg = _load_config(args.config, args.set)
    ph.mark("imports done")
    _wrap(hf_io, "load_pretrained", ph, "load model", after="eval")
    for mod_name, fn_names in _eval_hooks().items():
        import importlib

        mod = importlib.import_module(mod_name)
        for fn in fn_names:
            if hasattr(mod, fn):
                _wrap(mod, fn, ph, f"{mod_name.rsplit('.', 1)[-1]}.{fn}", after="eval")

    return _run_measured(driver.eval_command, cfg, args, ph, jax)


def _eval_hooks() -> dict[str, list[str]]:
    """Functions of the evaluation whose calls start a phase."""
    return {
        "cel_jax.evaluation.tofu": ["evaluate_split", "_probabilities", "_generation", "_gradnorm"],
        "cel_jax.evaluation.metrics": ["truth_ratio_scores", "gradnorm_scores"],
        "cel_jax.evaluation.forward": ["answer_nll", "option_nlls"],
        "cel_jax.evaluation.generate": ["generate_ids", "decode_batch"],
        "cel_jax.evaluation.ghost": ["item_grad_norms"],
    }


def _du_mb(path) -> float | None:
    p = Path(path)
    if not p.exists():
        return None
    return round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / MB)


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run", help="run a command, sample its RSS")
    r.add_argument(
        "--phase", action="append", default=[], help="regex: a matching output line starts a phase"
    )
    r.add_argument("--quiet", action="store_true", help="do not echo the command's output")
    for name in ("unlearn", "eval"):
        s = sub.add_parser(name, help=f"`cel-jax {name}` in-process, with phase markers")
        s.add_argument("--config", required=True)
        s.add_argument("--workdir", required=True)
        s.add_argument("--set", action="append", default=[], help="config override key=value (JSON value)")
        if name == "unlearn":
            s.add_argument("--patch", action="append", default=[], choices=sorted(PATCHES))
    for s in sub.choices.values():
        s.add_argument("--interval", type=float, default=0.02, help="RSS sampling period, s")
        s.add_argument("--json", help="append the result as one JSON line to this file")
    args, rest = ap.parse_known_args(argv)
    if args.mode == "run":
        if rest[:1] == ["--"]:
            rest = rest[1:]
        if not rest:
            ap.error("run: give the command after --")
        out = run_command(rest, args.phase, args.interval, echo=not args.quiet)
    elif rest:
        ap.error(f"unrecognized arguments: {rest}")
    else:
        out = measure_unlearn(args) if args.mode == "unlearn" else measure_eval(args)
    print()
    print_table(out["phases"], ("live_jax_mb",) if args.mode != "run" else ())
    out["command"] = "python -m bench.memory " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {k: v for k, v in out.items() if k != "phases"}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    return int(out.get("returncode", 0) or 0)


if __name__ == "__main__":
    sys.exit(main())
