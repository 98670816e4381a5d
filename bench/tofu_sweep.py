"""Does the bound hold on TOFU? PDU at several ε against GradDiff and NPO at several trade-off weights.

  python -m bench.tofu_sweep [--workdir runs/tofu_mini] [--out results/tofu_sweep] [--only NAME,...]
                            [--finished-only]   (report the finished runs; the rest are listed as not run)
                            [--reuse]   (keep the rows of <out>/results.json whose stage is not in the
                                         work dir, once the target and retain model reproduce its references)

Same protocol as `bench.tofu_mini --preset mini` (its target, retain model and their evaluations are
reused from the same work dir, or made first), then for forget01:
  PDU, the default recipe (alm)    ε = (1 + a) · L_r(target) for a in EPS_ALPHAS
  PDU, the authors' rule (gda)      the same ε, the same scale switches and gains (docs/dual.md)
  GradDiff, NPO                     retain weight alpha in WEIGHTS (their only trade-off knob)
Each run is a stage `<workdir>/sweep/<name>/` (skipped on a rerun once DONE.json exists).
Outputs in `--out`: results.json, results.md (table, Pareto front), eps_diagonal.png (final retain loss
against the requested ε: the promise is to stay on or under the diagonal) and pareto.png (forget quality
against model utility).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import tofu_mini as tm
from bench.tofu_report import finite, machine, same_values
from bench.tofu_stages import done, eval_stage, stage_curves, train_stage, write_json, write_text
from cel_jax import config_base
from cel_jax.training import retain_eval

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "tofu_sweep"
EPS_ALPHAS = (0.1, 0.25, 0.5)
WEIGHTS = (1.0, 2.0, 5.0)
# The package's default dual gains (config_base.DEFAULT_DUAL, docs/dual.md): portable across loss scales.
DUAL = {k: v for k, v in config_base.DEFAULT_DUAL.items() if k != "rule"}


# PDU's primal learning rates: None, the protocol's (2e-4, every method), and 5e-5, with which the final
# model keeps ε = 1.1·L_r(target) (docs/dual.md).
PDU_LRS = (None, 5e-5)
# Longer PDU runs, (rule, lr, epochs, eps alphas): the same forgetting budget as lr 2e-4 x 2 epochs, in
# smaller steps that λ can follow (the protocol's 2 epochs at 5e-5 keep the bound but barely forget).
LONG_RUNS = (("alm", 5e-5, 8, (0.5, 0.25, 0.1)),)


def entries() -> dict[str, dict]:
    """name -> {family, label, x (a or alpha), method, solver, method_args, dual, lr (None: protocol's),
    epochs (None: protocol's)}."""
    out = {}
    runs = [(rule, lr, None, EPS_ALPHAS) for lr in PDU_LRS for rule in ("alm", "gda")] + list(LONG_RUNS)
    for rule, lr, epochs, alphas in runs:
        r = "" if lr is None else f"{lr:.0e}".replace("e-0", "e-")  # 5e-5
        tag, rate = (f"_lr{r}", f" lr {r}") if r else ("", "")
        if epochs:
            tag, rate = f"{tag}_ep{epochs}", f"{rate}, {epochs} epochs"
        for a in alphas:
            out[f"pdu_{rule}{tag}_eps{a:g}"] = dict(
                family=f"PDU ({rule}{rate})",
                label=f"PDU {rule}{rate}, ε = {1 + a:g}·L_r(target)",
                x=a,
                method="pdu",
                solver="primal_dual",
                method_args={},
                dual={**DUAL, "rule": rule, "eps_alpha": a},
                lr=lr,
                epochs=epochs,
            )
    for method, fam in (("grad_diff", "GradDiff"), ("npo", "NPO")):
        for w in WEIGHTS:
            out[f"{method}_alpha{w:g}"] = dict(
                family=fam,
                label=f"{fam}, retain weight α = {w:g}",
                x=w,
                method=method,
                solver="scalarized",
                method_args={"alpha": w},
                dual=None,
                lr=None,
                epochs=None,
            )
    # Run order (results are written after each run): the default recipe at both rates, one point of each
    # baseline, the other trade-off weights, then gda (at 5e-5 first).
    long = [k for k in out if out[k]["epochs"]]
    first = [k for k in out if k.startswith("pdu_alm") and k not in long]
    order = [*first, "grad_diff_alpha1", "npo_alpha1"]
    order += [f"{m}_alpha{w:g}" for w in WEIGHTS[1:] for m in ("grad_diff", "npo")]
    order += sorted(
        (k for k in out if k.startswith("pdu_gda") and k not in long), key=lambda k: "_lr" not in k
    )
    order += long
    assert sorted(order) == sorted(out)
    return {k: out[k] for k in order}


def config(e: dict, preset: dict, target: str, data_dir: str):
    c = tm.base_cfg("unlearn", target, data_dir, preset["unlearn"])
    c.data.forget_split = "forget01"
    c.data.retain_split = "full"
    c.data.retain_rows = preset["retain_rows"]
    c.method, c.solver = e["method"], e["solver"]
    if e.get("lr"):
        c.optim.lr = e["lr"]
    if e.get("epochs"):
        c.epochs = e["epochs"]
    for k, v in e["method_args"].items():
        c.method_args[k] = v
    c.dual.eps = None
    # baselines: no bound, but the run's feasibility report (final retain loss) against the middle ε
    c.dual.eps_alpha = EPS_ALPHAS[len(EPS_ALPHAS) // 2]
    for k, v in (e["dual"] or {}).items():
        c.dual[k] = v
    return c


def pareto(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names whose (model utility, forget quality) no other point beats on both (>= both, > one)."""
    front = set()
    for n, (mu, fq) in points.items():
        if not any(m >= mu and f >= fq and (m > mu or f > fq) for k, (m, f) in points.items() if k != n):
            front.add(n)
    return front


def run(
    workdir: Path,
    out: Path,
    names: list[str],
    data_dir: str,
    model: str,
    finished_only: bool = False,
    reuse: dict | None = None,
) -> dict:
    """`reuse`: an earlier results.json; its rows stand in for runs whose stage is not in `workdir`."""
    allx = entries()
    bad = [n for n in names if n not in allx]
    if bad:
        raise ValueError(f"unknown entries {bad}; expected some of {list(allx)}")
    preset = tm.PRESETS["mini"]
    t0 = time.time()
    keep = False
    train_stage(workdir / "target", tm.finetune_cfg(preset, model, data_dir, True), "finetune", keep)
    train_stage(workdir / "retain", tm.finetune_cfg(preset, model, data_dir, False), "finetune", keep)
    ev_retain = eval_stage(
        workdir / "eval_retain", workdir / "retain" / "model", tm.eval_overrides(preset, data_dir, None)
    )
    ov = tm.eval_overrides(preset, data_dir, str(workdir / "eval_retain" / "TOFU_EVAL.json"))
    ev_target = eval_stage(workdir / "eval_target", workdir / "target" / "model", ov)
    refs = {"retain": ev_retain["summary"], "target": ev_target["summary"]}
    target_model = str(workdir / "target" / "model")
    refs["target_retain_loss"] = _target_retain_losses(workdir, preset, target_model, data_dir)
    kept = _kept_rows(reuse, refs) if reuse else {}
    rows, curves, reused = {}, {}, []
    for name in names:
        e = allx[name]
        st = workdir / "sweep" / name
        if name in kept and not (done(st) and done(st / "eval")):
            print(f"== {name}: kept from the earlier results.json (--reuse)")
            rows[name], curves[name] = kept[name]
            reused.append(name)
            continue
        if finished_only and not (done(st) and done(st / "eval")):
            continue  # listed as not run
        cfg = config(e, preset, target_model, data_dir)
        tr = train_stage(st, cfg, "unlearn")
        ev = eval_stage(st / "eval", st / "model", ov)
        s = _with_final_model_loss(st, cfg, tr)["summary"]
        rows[name] = {
            **{k: e[k] for k in ("family", "label", "x")},
            "eval": ev["summary"],
            "eps": s.get("eps") if e["dual"] else None,  # a bound only where one was requested
            "final_retain_loss": s.get("final_retain_loss"),
            "final_model_retain_loss": s.get("final_model_retain_loss"),
            "constraint_satisfied": s.get("final_model_satisfied") if e["dual"] else None,
            "last_epoch_satisfied": s.get("constraint_satisfied") if e["dual"] else None,
            "feasible_fraction": s.get("feasible_fraction"),
            "lambda_last": s.get("lambda_last"),
            "train_s": tr["wall_s"],
            "eval_s": ev["wall_s"],
        }
        curves[name] = stage_curves(st)
        report(rows, curves, refs, out, time.time() - t0, names, reused)
    return report(rows, curves, refs, out, time.time() - t0, names, reused)


# What must be equal for an earlier call's rows to stand beside this call's: the same target and retain
# model (their evaluations) and the same ε rows.
REF_KEYS = (("target", "model_utility"), ("target", "forget_quality"), ("retain", "model_utility"))


def _ref_values(refs: dict) -> list[float]:
    return [refs[a][b] for a, b in REF_KEYS] + [refs["target_retain_loss"]["eps_rows"]]


def _kept_rows(old: dict, refs: dict) -> dict[str, tuple[dict, dict]]:
    """name -> (row, curves) of an earlier results.json, after checking that its references are this
    work dir's (else the rows would compare runs from different targets)."""
    have, was = _ref_values(refs), _ref_values(old["references"])
    if not same_values(have, was):
        raise ValueError(
            f"--reuse: the earlier results.json was made with another target or retain model "
            f"(target MU, target FQ, retain MU, L_r(target): {was} there, {have} here); run without --reuse"
        )
    return {n: (r, old.get("curves", {}).get(n, {})) for n, r in old["rows"].items()}


def _target_retain_losses(workdir: Path, preset: dict, target_model: str, data_dir: str) -> dict:
    """The target's retain loss on ε's rows (L_r(target)) and on the last epoch's retain partners (what
    the last-epoch mean of a run that did not move would read); cached in the sweep's work dir."""
    path = workdir / "sweep" / "target_retain_loss.json"
    if path.exists():
        return json.loads(path.read_text())

    pdu = next(e for e in entries().values() if e["dual"])  # ε's rows do not depend on the entry
    cfg = config(pdu, preset, target_model, data_dir)
    got = retain_eval.retain_losses(cfg, target_model, epoch=preset["unlearn"]["epochs"] - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, got)
    return got


def _with_final_model_loss(stage: Path, cfg, tr: dict) -> dict:
    """A finished stage's DONE.json with the final model's retain loss on ε's rows (measured here for a
    stage that finished before summary.json carried it)."""
    s = tr["summary"]
    if "final_model_retain_loss" not in s and s.get("eps"):
        loss = retain_eval.retain_losses(cfg, str(stage / "model"), epoch=s["last_epoch"])["eps_rows"]
        s.update(
            final_model_retain_loss=loss,
            final_model_satisfied=bool(loss <= s["eps"] + s.get("tolerance", 0.0)),
        )
        write_json(stage / "DONE.json", tr)
    return tr


def report(rows, curves, refs, out: Path, wall: float, names: list[str], reused=()) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    pts = {n: (r["eval"]["model_utility"], r["eval"]["forget_quality"]) for n, r in rows.items()}
    front = pareto({**pts, "target": (refs["target"]["model_utility"], refs["target"]["forget_quality"])})
    only = "" if names == list(entries()) else " --only " + ",".join(names)
    res = {
        "command": "python -m bench.tofu_sweep" + only,
        "protocol": tm.PRESETS["mini"],
        "eps_alphas": EPS_ALPHAS,
        "weights": WEIGHTS,
        "dual": DUAL,
        "machine": machine(),
        "this_call_wall_s": round(wall, 1),
        "references": refs,
        "rows": finite(rows),
        "pareto_front": sorted(front),
        "not_run": [n for n in names if n not in rows],
        "reused": list(reused),
        "curves": finite(curves),
    }
    write_json(out / "results.json", res)
    write_text(out / "results.md", markdown(res))
    plots(res, out)
    return res


def _f(v, fmt=".3f"):
    return "–" if v is None else format(v, fmt)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "–"


def markdown(res: dict) -> str:
    mu_t = res["references"]["target"]["model_utility"]
    lines = [
        "# TOFU-mini sweep: does PDU keep the bound, and where does it sit on the Pareto front?",
        "",
        f"Regenerate: `{res['command']}` (stages cached in runs/tofu_mini/; about 8 min per 2-epoch row"
        " and 30 per 8-epoch row on 2 cores).",
        "",
        "Protocol: `bench.tofu_mini --preset mini` (universe TOFU `full` rows 0:80 + forget01, SmolLM2-135M"
        " fine-tuned 5 epochs; unlearning 2 epochs, 4 forget + 4 retain rows per step, lr 2e-4 for every"
        " method, PDU also at 5e-5, and at 5e-5 for 8 epochs). PDU: ε = (1 + a)·L_r(target), dual "
        + ", ".join(f"{k} {v}" for k, v in res["dual"].items())
        + ". GradDiff and NPO: retain weight α.",
        "",
        "| run | ε | retain loss, final model | bound kept | retain loss, last epoch | forget quality |"
        " model utility | MU / target | forget ROUGE | on the front |",
        "|---|---:|---:|:---:|---:|---:|---:|---:|---:|:---:|",
    ]
    tl = res["references"].get("target_retain_loss") or {}
    for ref in ("retain", "target"):
        s = res["references"][ref]
        losses = (
            f"{_f(tl.get('eps_rows'), '.4f')} | – | {_f(tl.get('partners'), '.4f')}"
            if ref == "target"
            else "– | – | –"
        )
        lines.append(
            f"| {ref} model | – | {losses} | {_f(s.get('forget_quality'), '.3g')} | {_f(s['model_utility'])}"
            f" | {_ratio(s['model_utility'], mu_t)} | {_f(s.get('forget_Q_A_ROUGE'))} |"
            f" {'yes' if ref in res['pareto_front'] else ''} |"
        )
    for n, r in res["rows"].items():
        ok = {True: "yes", False: "**no**", None: "–"}[r["constraint_satisfied"]]
        eps = _f(r["eps"], ".4f") if r["eps"] else "–"
        lines.append(
            f"| {r['label']} | {eps} | {_f(r.get('final_model_retain_loss'), '.4f')} | {ok}"
            f" | {_f(r['final_retain_loss'], '.4f')}"
            f" | {_f(r['eval']['forget_quality'], '.3g')} | {_f(r['eval']['model_utility'])}"
            f" | {_ratio(r['eval']['model_utility'], mu_t)} | {_f(r['eval'].get('forget_Q_A_ROUGE'))}"
            f" | {'yes' if n in res['pareto_front'] else ''} |"
        )
    lines += [
        "",
        "retain loss, final model: the final weights' retain loss on the rows ε was measured on"
        " (summary.json `final_model_retain_loss`; for the target it is L_r(target)); bound kept: that ≤ ε"
        " (`final_model_satisfied`; the baselines have no bound, their losses are shown for comparison)."
        " retain loss, last epoch: the mean training retain loss of the last epoch's steps"
        " (`final_retain_loss`), a random draw of retain rows seen at ten different weights; for the"
        " target, its loss on those same rows. forget quality"
        " (KS-test p-value against the retain model), model utility and forget"
        " ROUGE as in open-unlearning. On the front: no other run (or the target) has both higher forget"
        " quality and higher model utility.",
        "",
        f"Machine: {res['machine']}.",
    ]
    if res.get("reused"):
        lines += [
            "",
            "Rows from an earlier call of the same command on the same target, retain model and ε rows"
            f" (`--reuse`; their stages were not in this work dir): {', '.join(res['reused'])}.",
        ]
    if res["not_run"]:
        todo = ", ".join(res["not_run"])
        lines += ["", f"Not run yet (the command runs them and keeps the rows above): {todo}."]
    return "\n".join(lines) + "\n"


def plots(res: dict, out: Path) -> None:
    import os

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig, name):
        FigureCanvasAgg(fig)
        fig.tight_layout()
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out / name)

    rows = res["rows"]
    fams = sorted({r["family"] for r in rows.values()})
    marks = dict(zip(fams, "*soD^vPXh<>", strict=False))
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    pdu = [r for r in rows.values() if r["eps"] and r.get("final_model_retain_loss") is not None]
    for i, fam in enumerate(fams):
        rs = [r for r in pdu if r["family"] == fam]
        if rs:
            eps = [r["eps"] for r in rs]
            ax.scatter(
                eps,
                [r["final_model_retain_loss"] for r in rs],
                marker=marks[fam],
                s=70,
                c=f"C{i}",
                label=f"{fam}: final model",
            )
            ax.scatter(
                eps,
                [r["final_retain_loss"] for r in rs],
                marker=marks[fam],
                s=70,
                facecolors="none",
                edgecolors=f"C{i}",
                label=f"{fam}: last-epoch mean",
            )
    if pdu:
        vals = [v for r in pdu for v in (r["eps"], r["final_retain_loss"], r["final_model_retain_loss"])]
        lo, hi = min(vals) * 0.95, max(vals) * 1.05
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="final = ε (the promise: on or under)")
        ax.legend(fontsize=8)
    ax.set(xlabel="requested ε", ylabel="retain loss at the end", title="TOFU-mini: the bound")
    ax.grid(alpha=0.3)
    save(fig, "eps_diagonal.png")

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    floor = 1e-4
    for fam in fams:
        rs = [r for r in rows.values() if r["family"] == fam]
        xy = [(r["eval"]["model_utility"], max(r["eval"]["forget_quality"], floor)) for r in rs]
        tags = [f"ε {1 + r['x']:g}×" if r["eps"] else f"α {r['x']:g}" for r in rs]
        ax.scatter(*zip(*xy, strict=True), marker=marks[fam], s=70, label=fam)
        for tag, p in zip(tags, xy, strict=True):
            ax.annotate(tag, p, fontsize=7, xytext=(4, 3), textcoords="offset points")
    t = res["references"]["target"]
    ax.scatter([t["model_utility"]], [max(t["forget_quality"], floor)], marker="x", c="k", label="target")
    ax.axvline(0.95 * t["model_utility"], color="gray", ls=":", lw=1, label="0.95 × target utility")
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="forget quality 0.5")
    ax.set(xlabel="model utility", ylabel="forget quality (log)", yscale="log", ylim=(floor / 2, 2))
    ax.set_title("TOFU-mini forget01: forget quality vs model utility")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    save(fig, "pareto.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(tm.DEFAULT_WORKDIR))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--only", default="", help="comma-separated entry names (default: all, in order)")
    ap.add_argument("--finished-only", action="store_true", help="report the finished runs, start no new one")
    ap.add_argument(
        "--reuse", action="store_true", help="keep <out>/results.json's rows whose stage is absent"
    )
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=None, help="folder of TOFU JSONL files (default: $CEL_JAX_TOFU_DIR)")
    a = ap.parse_args(argv)
    import jax

    from cel_jax.cli.main import compilation_cache
    from cel_jax.data import tofu_dir

    a.data = a.data or (str(tofu_dir()) if tofu_dir() else None)
    if not a.data:
        ap.error("no TOFU data: pass --data=/path/to/tofu or set CEL_JAX_TOFU_DIR")
    compilation_cache(jax)
    names = [n for n in a.only.split(",") if n] or list(entries())
    old = Path(a.out, "results.json")
    reuse = json.loads(old.read_text()) if a.reuse and old.exists() else None
    run(Path(a.workdir), Path(a.out), names, a.data, a.model, a.finished_only, reuse)
    print(Path(a.out, "results.md").read_text())


if __name__ == "__main__":
    main()
