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
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

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
TABLE = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE", "privleak")


# --------------------------------------------------------------------------------------- configs
def _base(kind: str, model: str, data_dir: str, cfg_p: dict):
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
    c = _base("finetune", model, data_dir, preset["ft"])
    c.data.train_split = "full"
    c.data.train_rows = preset["retain_rows"] + ("," + FORGET_ROWS if with_forget else "")
    return c


def unlearn_cfg(preset: dict, target: str, data_dir: str, name: str):
    method, solver, args, _ = ALL[name]
    u = preset["unlearn"]
    c = _base("unlearn", target, data_dir, u)
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
    return dict(
        data_dir=data_dir,
        forget_split="forget01",
        subsets=preset["subsets"],
        retain_logs_path=retain_logs,
        **preset.get("eval_extra", {}),
    )


# --------------------------------------------------------------------------------------- stages
def _write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, then rename: no half-written file."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2))


def _done(stage: Path) -> dict | None:
    f = stage / "DONE.json"
    return json.loads(f.read_text()) if f.exists() else None


def train_stage(stage: Path, cfg, mode: str, keep_checkpoints: bool = False) -> dict:
    """Fine-tune or unlearn into `stage` (resumes from its checkpoints); model exported to stage/model.

    Once the stage is done its Orbax checkpoint (weights + AdamW moments: 1.4 GB for SmolLM2-135M, the
    exported model is 0.5 GB) is only needed to continue training, so it is deleted unless
    `keep_checkpoints`: a full run keeps ~6 GB on disk instead of ~23 GB.
    """
    from cel_jax.training import train

    got = _done(stage)
    if got is not None:
        return got
    print(f"\n=== {stage.name}: {mode} ({cfg.get('method', 'finetune')}) ===", flush=True)
    t0 = time.time()
    out = train.run(cfg, str(stage), mode)
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    info = {"wall_s": round(time.time() - t0, 1), "summary": out["summary"], "final_row": rows[-1]}
    _write_json(stage / "DONE.json", info)
    if not keep_checkpoints and (stage / "model").is_dir():
        shutil.rmtree(stage / "ckpt", ignore_errors=True)
    return info


def eval_stage(stage: Path, model_dir: Path, overrides: dict, dtype: str = "float32") -> dict:
    """TOFU suite of the exported model in model_dir (computing in `dtype`), written to `stage`."""
    from cel_jax.evaluation import driver
    from cel_jax.model import hf_io

    got = _done(stage)
    if got is not None:
        return got
    print(f"\n=== {stage.name}: TOFU eval of {model_dir} ===", flush=True)
    t0 = time.time()
    model, tok = hf_io.load_pretrained(str(model_dir), dtype=dtype)
    res = driver.evaluate("tofu", model, tok, overrides, stage, model_name=str(model_dir))
    info = {"wall_s": round(time.time() - t0, 1), "summary": res["summary"]}
    _write_json(stage / "DONE.json", info)
    return info


# --------------------------------------------------------------------------------------- report
def _curves(stage: Path) -> dict:
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    keys = ("step", "loss", "forget_loss", "retain_loss", "eps", "dual", "dual_active")
    return {k: [r[k] for r in rows] for k in keys}


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
    return str(v)


def markdown(res: dict) -> str:
    lines = [
        "# TOFU-mini results",
        "",
        f"Regenerate: `{res['command']}` (stages cached in the work dir).",
        "",
        f"Model: {res['model']}. {res['protocol_text']}",
        "",
        "| model | " + " | ".join(TABLE) + " | train s | eval s |",
        "|---|" + "---:|" * (len(TABLE) + 2),
    ]
    for row in res["rows"].values():
        vals = [_fmt(row["summary"].get(k)) for k in TABLE]
        lines.append(
            f"| {row['label']} | "
            + " | ".join(vals)
            + "".join(f" | {row[k]:.0f}" if row.get(k) is not None else " | –" for k in ("train_s", "eval_s"))
            + " |"
        )
    lines += [
        "",
        "forget_quality: KS-test p-value of forget truth ratios against the retain model's "
        "(higher = closer to the retain model); model_utility: harmonic mean of the 9 retain / "
        "real-author / world-fact scores; "
        "privleak: (s − s_retain) / s_retain × 100 with s = 1 − AUC of Min-K 40 % (0 = the retain model, "
        "−100 = fully exposed). "
        "Same definitions and names as open-unlearning (src/evals/metrics/; "
        "differences: docs/differences.md).",
        "",
        f"Machine: {res['machine']}. Wall time of all stages (fine-tuning, unlearning, evaluation):"
        f" {res['total_wall_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


SHORT = {"pdu": "PDU", "pdu_entropy": "PDU-entropy", "pdu_fixed": "fixed λ", "pdu_eta50": "PDU η=50"}


def short_label(name: str, label: str) -> str:
    return SHORT.get(name, label.split(" (")[0])


def plots(res: dict, out: Path) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    made = []

    def save(fig, name):
        FigureCanvasAgg(fig)
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out / name)
        made.append(name)

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    floor = 1e-4  # forget quality below it (a collapsed model) is drawn on the floor, value in the label
    for i, (name, row) in enumerate(res["rows"].items()):
        fq, mu = row["summary"].get("forget_quality"), row["summary"].get("model_utility")
        if fq is None or mu is None:
            continue
        off = fq < floor
        marker = "v" if off else ("*" if name.startswith("pdu") else "o")
        ax.scatter(mu, max(fq, floor), marker=marker, s=80)
        ax.annotate(
            short_label(name, row["label"]) + (f" (FQ {fq:.1e})" if off else ""),
            (mu, max(fq, floor)),
            fontsize=8,
            # alternate above / below so neighbours overlap less; fixed λ sits on PDU: label it on the left
            xytext=(-40, -12) if name == "pdu_fixed" else (5, 4 if i % 2 else -10),
            textcoords="offset points",
        )
    ax.set_ylim(floor / 2, 2)
    mu_retain = res["rows"].get("retain", {}).get("summary", {}).get("model_utility")
    if mu_retain is not None:  # the retain model has no forget quality of its own (it is the reference)
        ax.axvline(mu_retain, color="gray", ls=":", lw=1, label="retain model's utility")
        ax.legend(fontsize=8, loc="lower left")
    ax.set(
        xlabel="model utility",
        ylabel="forget quality (log)",
        yscale="log",
        title="TOFU-mini forget01: forget quality vs model utility",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, "fq_vs_mu.png")

    duals = {n: c for n, c in res["curves"].items() if ALL.get(n, ("", ""))[1] == "primal_dual"}
    if duals:  # every primal-dual run: PDU, PDU-entropy, the η ablation
        fig = Figure(figsize=(10, 3.6))
        a1, a2 = fig.subplots(1, 2)
        for name, cur in duals.items():
            label = short_label(name, res["rows"][name]["label"])
            a1.plot(cur["step"], cur["dual"], label=label)
            a2.plot(
                cur["step"], [r - e for r, e in zip(cur["retain_loss"], cur["eps"], strict=True)], label=label
            )
        a1.set(title="primal-dual runs: λ", xlabel="optimizer step")
        a1.legend(fontsize=8)
        a2.axhline(0, color="k", lw=0.8, ls="--")
        a2.set(title="retain loss − ε", xlabel="optimizer step")
        fig.tight_layout()
        save(fig, "pdu_dual.png")

    n_rows = max(1, math.ceil(len(res["curves"]) / 5))
    fig = Figure(figsize=(12, 3 * n_rows))
    axes = fig.subplots(n_rows, 5, squeeze=False).ravel()
    for ax in axes[len(res["curves"]) :]:
        ax.set_visible(False)
    for ax, (name, cur) in zip(axes, res["curves"].items(), strict=False):
        ax.plot(cur["step"], cur["forget_loss"])
        ax.set_title(short_label(name, res["rows"][name]["label"]), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle("forget loss per method (each method's own loss)")
    fig.tight_layout()
    save(fig, "forget_loss_curves.png")
    return made


# --------------------------------------------------------------------------------------- main
def machine() -> str:
    from bench.throughput import cpu_name

    cpu = cpu_name() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, load at the end {tuple(round(x, 1) for x in os.getloadavg())}"


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
        curves[name] = _curves(st)
        report(preset_name, preset, model, rows, curves, out, time.time() - t0, flags)  # after each method
    return report(preset_name, preset, model, rows, curves, out, time.time() - t0, flags)


def _finite(x):
    """NaN / inf -> None, recursively (strict JSON; fine-tuning rows have no retain loss)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def report(preset_name, preset, model, rows, curves, out: Path, wall: float, flags: str = "") -> dict:
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
        "rows": _finite(rows),
        "curves": _finite(curves),
    }
    _write_json(out / "results.json", res)
    _write_text(out / "results.md", markdown(res))
    res["plots"] = plots(res, out)
    return res


def main(argv=None) -> None:
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
