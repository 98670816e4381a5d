"""The standard TOFU pipeline (forget01 / forget05 / forget10) for an accelerator, in one process.

  python -m bench.tofu_full [--splits forget01,forget05,forget10] [--workdir runs/tofu_full]
                            [--out results/tofu_full] [--dtype bfloat16] [--batch 32] [--deadline-min 8]

Stages, each cached in `<workdir>/<stage>/` with a DONE.json (bench.tofu_mini's stage functions):
  target           fine-tune the model on TOFU `full` (the reference recipe: configs/tofu_smollm2_finetune.py,
                   lr 1e-5, wd 0.01, one warmup epoch, 5 epochs, effective batch 32)
  retain<NN>       the same recipe on retain99 / retain95 / retain90 (the forget-quality reference models)
  eval_retain<NN>  full TOFU suite of the retain model on its forget split (its logs feed forget_quality)
  eval_target<SS>  full TOFU suite of the target on forget<SS>
  pdu<SS>          PDU unlearning of forget<SS> from the target with configs/tofu_smollm2.py (the authors'
                   settings: λ0 100, η 5, ε 0.3, 5 warm-start epochs of 10), then its TOFU suite
Splits run in the order given, each split's whole chain before the next; after every stage the table is
rewritten (`<out>/results.{json,md}`), so a run stopped by `--deadline-min` (checked before each stage)
still reports everything it finished. Every evaluation uses every item (no subsets).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from bench.tofu_report import finite, fmt, machine
from bench.tofu_stages import done, eval_stage, stage_curves, train_stage, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
HUB = "locuslab/TOFU"  # --data=locuslab/TOFU reads the hub (online users)
RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
TABLE = (
    "forget_quality",
    "model_utility",
    "forget_truth_ratio",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "privleak",
)


def load_config(path: Path, arg: str | None = None):
    """`get_config(arg)` of a configs/*.py file (the same file `cel-jax --config=path[:arg]` reads)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg is not None else mod.get_config()


def _common(c, a: argparse.Namespace):
    c.data.source = a.data
    c.model.dtype = a.dtype
    c.batch_size = a.batch
    c.grad_accum = a.grad_accum
    c.data.bucket_multiple = a.bucket  # fewer padded shapes = fewer compiles (padding is masked)
    c.ckpt.every = 10_000  # a final checkpoint only: the stages are short
    c.ckpt.keep = 1
    c.export = True
    if a.max_steps:
        c.max_steps = a.max_steps
    return c


def finetune_cfg(a: argparse.Namespace, split: str):
    c = _common(load_config(ROOT / "configs" / "tofu_smollm2_finetune.py"), a)
    c.model.name_or_path = a.model
    c.data.train_split = split
    if a.rows:
        c.data.train_rows = a.rows
    return c


def pdu_cfg(a: argparse.Namespace, split: str, target: Path):
    c = _common(load_config(ROOT / "configs" / "tofu_smollm2.py", split), a)
    c.model.name_or_path = str(target)
    c.eval.enabled = False  # evaluated by eval_stage, like every other model here
    if a.rows:
        c.data.forget_rows = c.data.retain_rows = a.rows
    return c


def eval_overrides(a: argparse.Namespace, split: str, retain_logs: str | None) -> dict:
    ov = dict(
        data_dir=a.data,
        forget_split=split,
        retain_logs_path=retain_logs,
        batch_size=a.eval_batch,
        generation_batch_size=a.gen_batch,
        progress=False,
        bucket_multiple=a.bucket,
    )
    if a.max_items:
        ov.update(max_items=a.max_items, max_new_tokens=4)
    return ov


def markdown(res: dict) -> str:
    lines = [
        "# TOFU (forget01 / 05 / 10) on one accelerator",
        "",
        f"Regenerate: `{res['command']}`",
        "",
        f"Model: {res['model']}, compute {res['dtype']}; device: {res['device']}. {res['protocol_text']}",
        "",
    ]
    for split, rows in res["splits"].items():
        if not rows:
            lines += [f"## {split}", "", "Not run (see below).", ""]
            continue
        lines += [
            f"## {split}",
            "",
            "| model | " + " | ".join(TABLE) + " | train s | eval s |",
            "|---|" + "---:|" * (len(TABLE) + 2),
        ]
        for name, row in rows.items():
            s = row["summary"]
            lines.append(
                f"| {name} | "
                + " | ".join(fmt(s.get(k)) for k in TABLE)
                + "".join(f" | {row[k]:.0f}" for k in ("train_s", "eval_s"))
                + " |"
            )
        lines.append("")
    lines += [f"Stage wall times (s): {json.dumps(res['stage_s'])}", ""]
    if res["skipped"]:
        why = f"deadline of {res['deadline_min']:.1f} min reached, or a stage it needs did not run"
        lines += [f"Not run ({why}): {', '.join(res['skipped'])}", ""]
    lines.append(f"Machine: {res['machine']}. This call: {res['this_call_wall_s'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def report(a: argparse.Namespace, splits: dict, stage_s: dict, skipped: list, out: Path, t0: float):
    import jax

    res = {
        "command": "python -m bench.tofu_full " + " ".join(a.argv),
        "model": a.model,
        "dtype": a.dtype,
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "jax": jax.__version__,
        "protocol_text": (
            f"Fine-tuning: configs/tofu_smollm2_finetune.py (batch {a.batch} x accum {a.grad_accum});"
            f" unlearning: configs/tofu_smollm2.py (PDU, batch {a.batch} x accum {a.grad_accum});"
            f" evaluation: every item of every TOFU set, generation batch {a.gen_batch}"
            + (f"; SMOKE: rows {a.rows}, max_steps {a.max_steps}, max_items {a.max_items}" if a.smoke else "")
            + "."
        ),
        "machine": machine(),
        "deadline_min": a.deadline_min,
        "stage_s": stage_s,
        "skipped": skipped,
        "this_call_wall_s": round(time.time() - t0, 1),
        "splits": finite(splits),
        # λ, forget / retain loss and ε per optimizer step of every finished PDU run
        "curves": {
            n: finite(stage_curves(Path(a.workdir) / n))
            for n in (f"pdu{s[-2:]}" for s in RETAIN)
            if done(Path(a.workdir) / n) is not None
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    write_text(out / "results.md", markdown(res))
    return res


def run(a: argparse.Namespace) -> dict:
    splits = [s for s in a.splits.split(",") if s]
    bad = [s for s in splits if s not in RETAIN]
    if bad or not splits:
        raise ValueError(f"unknown TOFU forget splits {bad or splits}; expected some of {list(RETAIN)}")
    if not a.data:  # $CEL_JAX_TOFU_DIR (a local folder of TOFU JSONL files) when set, else the hub
        from cel_jax.data import tofu_source

        a.data = tofu_source()
    if a.data != HUB and not (Path(a.data) / "full.jsonl").exists():
        raise FileNotFoundError(f"TOFU JSONL files not found in {a.data} (full.jsonl); or pass --data={HUB}")
    work, out = Path(a.workdir), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stage_s: dict[str, float] = {}
    skipped: list[str] = []
    table: dict[str, dict] = {}

    def stage(name: str, fn, *args, after=True):
        """fn(work / name, *args) unless a stage it needs did not run (`after` falsy) or the deadline has
        passed; a finished stage is only read back."""
        if not after:
            skipped.append(name)
            return None
        if done(work / name) is None and time.time() - t0 > a.deadline_min * 60:
            skipped.append(name)
            return None
        info = fn(work / name, *args)
        stage_s[name] = info["wall_s"]
        report(a, table, stage_s, skipped, out, t0)
        return info

    def row(tr: dict, ev: dict) -> dict:
        return {"summary": ev["summary"], "train_s": tr["wall_s"], "eval_s": ev["wall_s"]}

    target = stage("target", train_stage, finetune_cfg(a, "full"), "finetune")
    for split in splits:
        r, ss = RETAIN[split], split[-2:]
        rows = table.setdefault(split, {})
        ret = stage(r, train_stage, finetune_cfg(a, r), "finetune")
        ev_r = stage(
            f"eval_{r}", eval_stage, work / r / "model", eval_overrides(a, split, None), a.dtype, after=ret
        )
        if ev_r:
            rows[f"{r} (reference)"] = row(ret, ev_r)
        # the target's and PDU's suites need the retain model's logs (forget_quality, privleak)
        ov = eval_overrides(a, split, str(work / f"eval_{r}" / "TOFU_EVAL.json"))
        ev_t = stage(
            f"eval_target{ss}", eval_stage, work / "target" / "model", ov, a.dtype, after=target and ev_r
        )
        if ev_t:
            rows["target"] = row(target, ev_t)
        pdu = stage(
            f"pdu{ss}", train_stage, pdu_cfg(a, split, work / "target" / "model"), "unlearn", after=target
        )
        ev_p = stage(
            f"pdu{ss}/eval", eval_stage, work / f"pdu{ss}" / "model", ov, a.dtype, after=pdu and ev_r
        )
        if ev_p:
            rows["PDU"] = {
                **row(pdu, ev_p),
                "lambda_end": pdu["summary"].get("dual"),
                "eps": pdu["summary"].get("eps"),
            }
    return report(a, table, stage_s, skipped, out, t0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="forget01,forget05,forget10")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "tofu_full"))
    ap.add_argument("--out", default=str(ROOT / "results" / "tofu_full"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--data",
        default=None,
        help=f"folder of TOFU JSONL files or {HUB} (default: $CEL_JAX_TOFU_DIR, else {HUB})",
    )
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--batch", type=int, default=32, help="micro-batch (rows); effective = batch x accum")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--eval-batch", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, default=256)
    ap.add_argument("--bucket", type=int, default=64, help="padded lengths are multiples of this")
    ap.add_argument("--deadline-min", type=float, default=1e9, help="start no stage after this many minutes")
    ap.add_argument("--smoke", action="store_true", help="plumbing check: 8 rows, 2 steps, 2 eval items")
    return ap


def main(argv=None) -> None:
    import sys

    a = build_parser().parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.rows, a.max_steps, a.max_items = ("0:8", 2, 2) if a.smoke else ("", None, None)
    for k in ("batch", "grad_accum", "eval_batch", "gen_batch", "bucket"):
        if getattr(a, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    import jax

    from cel_jax.cli.main import compilation_cache

    compilation_cache(jax)  # the stages share compiled steps across processes and reruns
    res = run(a)
    print(Path(a.out, "results.md").read_text())
    print(f"this call: {res['this_call_wall_s'] / 60:.1f} min -> {a.out}")


if __name__ == "__main__":
    main()
