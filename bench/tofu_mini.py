"""TOFU-mini: PDU against the baselines on a real pretrained model and real TOFU data, sized for 2 CPU cores.

  python -m bench.tofu_mini [--preset mini|issue] [--workdir runs/tofu_mini] [--out results/tofu_mini]
                            [--methods pdu,grad_diff,...] [--model smollm2-135m-instruct]

Stages, each cached in `<workdir>/<stage>/` (a stage with DONE.json is skipped on a rerun, so rerunning one
method costs its own unlearning + evaluation only; delete that folder to redo it):
  target        fine-tune the model on the universe (retain authors + the forget01 authors)
  retain        the same recipe on the retain authors only (the reference model for forget quality)
  eval_retain   TOFU suite of the retain model: its TOFU_EVAL.json gives forget_quality and privleak
  eval_target   TOFU suite of the target (the "before unlearning" row)
  <method>      unlearn forget01 from the target, then its TOFU suite (in `<method>/eval/`)
Then `<out>/results.json`, `<out>/results.md` and the plots. The protocol is in bench/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

# The stages themselves are in bench/tofu_stages.py, the table and plots in bench/tofu_report.py.
from bench.tofu_report import finite, machine, markdown, plots
from bench.tofu_stages import eval_stage, stage_curves, train_stage, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR, DEFAULT_OUT = ROOT / "runs" / "tofu_mini", ROOT / "results" / "tofu_mini"


def _rel(path: Path) -> str:
    """`path` relative to the repository root when inside it (for printed commands)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


# Universe rows of TOFU `full` (author i = rows 20i..20i+19; forget01 = rows 3960..3999, authors 198-199).
PRESETS: dict[str, dict[str, Any]] = {
    # What fits the 2-core CPU (measured: about 9 s per 8-row step of SmolLM2-135M): 4 retain authors.
    # Fine-tune 5 epochs: the calibration in results/tofu_mini/calibration_5_epochs (target forget
    # ROUGE 0.968) showed the 6th epoch buys memorisation the benchmark does not need, for ~10 min.
    "mini": dict(
        retain_rows="0:80",
        ft=dict(epochs=5, lr=2e-4, batch_size=8, warmup_epochs=0.5),
        unlearn=dict(epochs=2, batch_size=4, lr=2e-4, warmup_epochs=0.2, dual_warmup_epochs=1),
        subsets="retain=0:80:4;ra=0:100:5;wf=0:117:6",
    ),
    # The universe: authors 0-19 (= retain_perturbed) + forget01; every evaluation item.
    "issue": dict(
        retain_rows="0:400",
        ft=dict(epochs=6, lr=2e-4, batch_size=8, warmup_epochs=0.5),
        unlearn=dict(epochs=2, batch_size=4, lr=2e-4, warmup_epochs=0.2, dual_warmup_epochs=1),
        subsets=None,
    ),
}
FORGET_ROWS = "3960:4000"

# name -> (method, solver, method_args, label). PDU's dual: λ0 and η of the authors' run.sh, ε relative.
METHODS: dict[str, tuple[str, str, dict, str]] = {
    "pdu": ("pdu", "primal_dual", {}, "PDU (logit margin, primal-dual)"),
    "pdu_entropy": ("pdu_entropy", "primal_dual", {}, "PDU (entropy, primal-dual)"),
    "pdu_fixed": ("pdu", "scalarized", {"alpha": 100.0}, "logit margin, fixed λ = λ0 (scalarised)"),
    "grad_ascent": ("grad_ascent", "scalarized", {}, "GradAscent"),
    "grad_diff": ("grad_diff", "scalarized", {}, "GradDiff"),
    "npo": ("npo", "scalarized", {}, "NPO"),
    "simnpo": ("simnpo", "scalarized", {}, "SimNPO"),
    "idk_dpo": ("idk_dpo", "scalarized", {}, "IdkDPO"),
    "rmu": ("rmu", "scalarized", {}, "RMU"),
    "undial": ("undial", "scalarized", {}, "UNDIAL"),
}
# Extra rows, not in the default run (`--methods pdu_eta50`): PDU with a 10x dual step size η = 50, to
# see whether λ moving matters (with η = 5 it only rose 100 -> 116 and PDU ~ the fixed-λ run).
ABLATIONS: dict[str, tuple[str, str, dict, str]] = {
    "pdu_eta50": ("pdu", "primal_dual", {}, "PDU, η = 50 (ablation: 10x dual step)"),
}
DUAL_LR = {"pdu_eta50": 50.0}  # η per entry; 5.0 otherwise
ALL = {**METHODS, **ABLATIONS}


# --------------------------------------------------------------------------------------- configs
def base_cfg(kind: str, model: str, data_dir: str, cfg_p: dict):
    """The preset's shared training settings (`cfg_p`: epochs, lr, batch, warmup) on the finetune or
    unlearn defaults: 512-token rows, an FSDP mesh over all devices, no accumulation, export on."""
    from cel_jax import config_base

    c = config_base.finetune_config() if kind == "finetune" else config_base.unlearn_config()
    c.model.name_or_path = model
    c.data.source = data_dir
    c.data.max_length = 512
    c.mesh.shape = (1, -1, 1)
    c.grad_accum = 1
    c.batch_size = cfg_p["batch_size"]
    c.epochs = cfg_p["epochs"]
    c.optim.lr = cfg_p["lr"]
    c.optim.warmup_epochs = cfg_p["warmup_epochs"]
    c.ckpt.every = 25
    c.ckpt.keep = 1
    c.export = True
    return c


def finetune_cfg(preset: dict, model: str, data_dir: str, with_forget: bool):
    """Fine-tuning on the preset's retain rows of TOFU `full`, plus the forget01 rows for the target."""
    c = base_cfg("finetune", model, data_dir, preset["ft"])
    c.data.train_split = "full"
    c.data.train_rows = preset["retain_rows"] + ("," + FORGET_ROWS if with_forget else "")
    return c


def unlearn_cfg(preset: dict, target: str, data_dir: str, name: str):
    """Unlearning forget01 from `target` with the table entry `name` (ALL): method, solver, its arguments
    and the authors' dual."""
    method, solver, args, _ = ALL[name]
    u = preset["unlearn"]
    c = base_cfg("unlearn", target, data_dir, u)
    c.data.forget_split = "forget01"
    c.data.retain_split = "full"
    c.data.retain_rows = preset["retain_rows"]
    c.method = method
    c.solver = solver
    for k, v in args.items():
        c.method_args[k] = v
    from cel_jax import config_base

    # the authors' gda, λ0 100, η 5; ε = 1.25 x the target's own retain loss (see bench/README.md)
    c.dual = config_base.authors_dual(
        lr=DUAL_LR.get(name, 5.0), eps=None, eps_alpha=0.25, warmup_epochs=u["dual_warmup_epochs"]
    )
    return c


def eval_overrides(preset: dict, data_dir: str, retain_logs: str | None) -> dict:
    """The TOFU suite's settings: forget01, the preset's subsets, the retain model's logs (forget quality)."""
    return dict(
        data_dir=data_dir,
        forget_split="forget01",
        subsets=preset["subsets"],
        retain_logs_path=retain_logs,
        **preset.get("eval_extra", {}),
    )


# --------------------------------------------------------------------------------------- main
def run(
    preset_name: str,
    workdir: Path,
    out: Path,
    methods: list[str],
    model: str,
    data_dir: str,
    ft_epochs: int | None = None,
    keep_checkpoints: bool = False,
) -> dict:
    """Every stage of the preset for `methods` (cached ones are read back), the report rewritten after
    each method; returns the results dict."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; expected one of {sorted(PRESETS)}")
    bad = [m for m in methods if m not in ALL]
    if bad:
        raise ValueError(f"unknown methods {bad}; expected some of {list(ALL)}")
    if not (Path(data_dir) / "full.jsonl").exists():
        raise FileNotFoundError(f"TOFU JSONL files not found in {data_dir} (full.jsonl)")
    preset = PRESETS[preset_name]
    if ft_epochs is not None:  # a calibration variant of the preset's fine-tuning recipe
        if ft_epochs < 1:
            raise ValueError(f"ft_epochs must be positive, got {ft_epochs}")
        preset = {**preset, "ft": {**preset["ft"], "epochs": ft_epochs}}
    flags = (f" --ft-epochs {ft_epochs}" if ft_epochs is not None else "") + "".join(
        f" --{flag} {_rel(path)}"
        for flag, path, default in (("workdir", workdir, DEFAULT_WORKDIR), ("out", out, DEFAULT_OUT))
        if Path(path).resolve() != default.resolve()
    )
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    keep = keep_checkpoints
    target = train_stage(workdir / "target", finetune_cfg(preset, model, data_dir, True), "finetune", keep)
    retain = train_stage(workdir / "retain", finetune_cfg(preset, model, data_dir, False), "finetune", keep)
    ev_retain = eval_stage(
        workdir / "eval_retain", workdir / "retain" / "model", eval_overrides(preset, data_dir, None)
    )
    retain_logs = str(workdir / "eval_retain" / "TOFU_EVAL.json")
    ov = eval_overrides(preset, data_dir, retain_logs)
    ev_target = eval_stage(workdir / "eval_target", workdir / "target" / "model", ov)

    rows = {
        "retain": {
            "label": "retain model (reference)",
            "summary": ev_retain["summary"],
            "train_s": retain["wall_s"],
            "eval_s": ev_retain["wall_s"],
        },
        "target": {
            "label": "target (before unlearning)",
            "summary": ev_target["summary"],
            "train_s": target["wall_s"],
            "eval_s": ev_target["wall_s"],
        },
    }
    curves = {}
    for name in methods:
        st = workdir / name
        tr = train_stage(
            st, unlearn_cfg(preset, str(workdir / "target" / "model"), data_dir, name), "unlearn", keep
        )
        ev = eval_stage(st / "eval", st / "model", ov)
        rows[name] = {
            "label": ALL[name][3],
            "summary": ev["summary"],
            "train_s": tr["wall_s"],
            "eval_s": ev["wall_s"],
            "final": tr["final_row"],
            "lambda_end": tr["summary"]["dual"],
            "eps": tr["summary"]["eps"],
        }
        curves[name] = stage_curves(st)
        report(preset_name, preset, model, rows, curves, out, time.time() - t0, flags)  # after each method
    return report(preset_name, preset, model, rows, curves, out, time.time() - t0, flags)


def report(preset_name, preset, model, rows, curves, out: Path, wall: float, flags: str = "") -> dict:
    """results.json, results.md and the plots in `out` for the rows so far; returns the results dict."""
    ft, ul = preset["ft"], preset["unlearn"]
    text = (
        f"Preset `{preset_name}`: universe = TOFU `full` rows {preset['retain_rows']}"
        f" + forget01 ({FORGET_ROWS}); fine-tune {ft['epochs']} epochs, lr {ft['lr']},"
        f" batch {ft['batch_size']}; unlearning {ul['epochs']} epochs, batch {ul['batch_size']} forget"
        f" + {ul['batch_size']} retain rows, lr {ul['lr']} for every method;"
        f" evaluation subsets: {preset['subsets'] or 'none (every item)'}."
    )
    res = {
        "command": f"python -m bench.tofu_mini --preset {preset_name}"
        + flags
        + (
            ""
            if set(METHODS) == set(rows) & set(ALL)
            else " --methods " + (",".join(k for k in rows if k in ALL) or '""')
        ),
        "preset": preset_name,
        "protocol": preset,
        "protocol_text": text,
        "model": model,
        "machine": machine(),
        # compute time of all stages (from their DONE.json), whether they ran now or in an earlier call
        "total_wall_s": round(
            sum(r.get("train_s") or 0.0 for r in rows.values())
            + sum(r.get("eval_s") or 0.0 for r in rows.values()),
            1,
        ),
        "this_call_wall_s": round(wall, 1),
        "rows": finite(rows),
        "curves": finite(curves),
    }
    write_json(out / "results.json", res)
    write_text(out / "results.md", markdown(res))
    res["plots"] = plots(res, out, [n for n, m in ALL.items() if m[1] == "primal_dual"])
    return res


def main(argv=None) -> None:
    """`python -m bench.tofu_mini`: parse the flags, find the TOFU data, run, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini", choices=sorted(PRESETS))
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=None, help="folder of TOFU JSONL files (default: $CEL_JAX_TOFU_DIR)")
    ap.add_argument("--ft-epochs", type=int, default=None, help="override the preset's fine-tune epochs")
    ap.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each finished training stage's Orbax checkpoint (deleted by default; the model is kept)",
    )
    a = ap.parse_args(argv)
    import jax

    from cel_jax.cli.main import compilation_cache
    from cel_jax.data import tofu_dir

    a.data = a.data or (str(tofu_dir()) if tofu_dir() else None)
    if not a.data:
        ap.error(
            "no TOFU data: pass --data=/path/to/tofu (a folder of TOFU JSONL files) or set CEL_JAX_TOFU_DIR"
        )
    compilation_cache(jax)  # a rerun of a method reuses its compiled step and eval programs
    methods = [m for m in a.methods.split(",") if m]
    res = run(
        a.preset, Path(a.workdir), Path(a.out), methods, a.model, a.data, a.ft_epochs, a.keep_checkpoints
    )
    print(Path(a.out, "results.md").read_text())
    print(
        f"stages took {res['total_wall_s'] / 60:.1f} min"
        f" ({res['this_call_wall_s'] / 60:.1f} in this call) -> {a.out}"
    )


if __name__ == "__main__":
    main()
