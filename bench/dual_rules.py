"""Dual rules side by side: which rule keeps L_r ≤ ε on the most settings with one set of gains?

  python -m bench.dual_rules [--out results/dual_rules] [--workdir runs/dual_rules]
                             [--rules gda,pi,alm] [--eps-alpha 0.5,1.0,2.0] [--reuse]

Every run is the README main job (configs/demo.py: the embedded SmolLM2 taught the eight demo people,
then two of them unlearned) with only the rule and ε changed; each rule keeps the same gains on every
ε (no per-setting tuning). Per run: the feasibility report (final retain loss = mean of the last epoch
vs ε), λ's range, and forget / retain ROUGE-L recall before and after. Writes `<out>/results.json`,
`<out>/results.md` (table + the command) and `<out>/dual_rules.png` (final retain loss against ε, the
diagonal being the promise; λ over the steps). `--reuse` keeps the runs already in `<out>/results.json`
(same rule, same α) and runs only the missing ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

from bench.tofu_report import same_values
from bench.tofu_stages import write_text

ROOT = Path(__file__).resolve().parents[1]

# One set of gains per rule, shared by every ε: the demo's (normalised forget loss, relative violation);
# gda is νPI without its proportional term, alm adds the quadratic penalty to gda.
RULES: dict[str, dict] = {
    "gda": dict(rule="gda", lam0=1.0, lr=1.0, kp=0.0, nu=0.0),
    "pi": dict(rule="pi", lam0=1.0, lr=1.0, kp=2.0, nu=0.9),
    "alm": dict(rule="alm", lam0=1.0, lr=1.0, kp=0.0, nu=0.0, rho=10.0),
}


def demo_config():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "configs" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def run_one(name: str, alpha: float, workdir: Path) -> dict:
    from cel_jax.training import train

    cfg = demo_config()
    for k, v in RULES[name].items():
        cfg.dual[k] = v
    cfg.dual.eps_alpha = alpha
    cfg.export = False
    cfg.ckpt.every = 10**9
    t0 = time.time()
    out = train.run(cfg, str(workdir), "unlearn")
    s = dict(out["summary"])
    s.update(rule=name, eps_alpha=alpha, gains=RULES[name], wall_total_s=time.time() - t0)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    s["lambda_trace"] = [r["dual"] for r in rows] + [rows[-1]["dual_next"]]
    s["retain_trace"] = [r["retain_loss"] for r in rows]
    return s


# A kept run stands beside a new one only if both unlearned the same target: its answers before
# unlearning and its retain loss L_r(target) = ε / (1 + α) are the target's.
def target_key(run: dict) -> tuple[float, float, float]:
    return (run["forget_rouge_before"], run["retain_rouge_before"], run["eps"] / (1 + run["eps_alpha"]))


def check_same_target(new: dict, kept: list[dict]) -> None:
    have = target_key(new)
    for old in kept:
        was = target_key(old)
        if not same_values(have, was):
            raise ValueError(
                f"--reuse: the kept run {old['rule']} α={old['eps_alpha']} unlearned another target "
                f"(forget / retain ROUGE before, L_r(target): {was} there, {have} now); run without --reuse"
            )


def table(results: list[dict], command: str) -> str:
    head = (
        "| rule | ε = (1+α)·L_r(target), α | ε | final retain loss | satisfied | feasible steps | "
        "λ first → last (max) | forget ROUGE before → after | retain ROUGE before → after |"
    )
    lines = [
        "# Dual rules on the README main job",
        "",
        f"Regenerate: `{command}`",
        "",
        "Each rule keeps one set of gains for every ε: "
        + "; ".join(
            f"{k}: {', '.join(f'{a}={b}' for a, b in v.items() if a != 'rule')}" for k, v in RULES.items()
        )
        + ". Forget loss normalised by its first value (`dual.normalize_forget`), violation as a fraction "
        "of ε (`dual.relative`); everything else as in configs/demo.py.",
        "",
        head,
        "|---" * 9 + "|",
    ]
    for r in results:
        lines.append(
            f"| {r['rule']} | {r['eps_alpha']} | {r['eps']:.4f} | {r['final_retain_loss']:.4f} "
            f"({r['final_retain_minus_eps']:+.4f}) | {'yes' if r['constraint_satisfied'] else '**no**'} | "
            f"{r['feasible_fraction']:.0%} | {r['lambda_first']:.3g} → {r['lambda_last']:.3g} "
            f"({r['lambda_max']:.3g}) | {r['forget_rouge_before']:.3f} → {r['forget_rouge_after']:.3f} | "
            f"{r['retain_rouge_before']:.3f} → {r['retain_rouge_after']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2)
    marks = {"gda": "o", "pi": "s", "alm": "^"}
    for name in dict.fromkeys(r["rule"] for r in results):
        rs = [r for r in results if r["rule"] == name]
        ax.plot(
            [r["eps"] for r in rs],
            [r["final_retain_loss"] for r in rs],
            marks.get(name, "x") + "-",
            label=name,
        )
        for r in rs:
            ax2.plot(r["lambda_trace"], label=f"{name} α={r['eps_alpha']}", alpha=0.8)
    lo = min(min(r["eps"], r["final_retain_loss"]) for r in results)
    hi = max(max(r["eps"], r["final_retain_loss"]) for r in results)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="final = ε (the promise: at or below)")
    ax.set(
        xlabel="requested ε", ylabel="final retain loss (mean of the last epoch)", title="retain loss vs ε"
    )
    ax.legend(fontsize=8)
    ax2.set(xlabel="step", ylabel="λ", title="λ over the steps", yscale="symlog")
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "dual_rules"))
    p.add_argument("--workdir", default=str(ROOT / "runs" / "dual_rules"))
    p.add_argument("--rules", default="gda,pi,alm")
    p.add_argument("--eps-alpha", default="0.5,1.0,2.0")
    p.add_argument("--reuse", action="store_true", help="keep the runs already in <out>/results.json")
    a = p.parse_args(argv)
    rules = [r for r in a.rules.split(",") if r]
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        p.error(f"unknown rule(s) {unknown}; choose from {sorted(RULES)}")
    alphas = [float(x) for x in a.eps_alpha.split(",") if x]
    out, wd = Path(a.out), Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    command = f"python -m bench.dual_rules --rules {a.rules} --eps-alpha {a.eps_alpha}"
    kept = {}
    if a.reuse and (out / "results.json").exists():
        runs = json.loads((out / "results.json").read_text())["runs"]
        kept = {(r["rule"], r["eps_alpha"]): r for r in runs}
    results = []
    for alpha in alphas:
        for name in rules:
            if (name, alpha) in kept:
                print(f"== {name}, eps_alpha {alpha}: kept from {out / 'results.json'}")
                results.append(kept[(name, alpha)])
                continue
            print(f"== {name}, eps_alpha {alpha}")
            results.append(run_one(name, alpha, wd / f"{name}_a{alpha}"))
            check_same_target(results[-1], list(kept.values()))
            write_text(out / "results.json", json.dumps({"command": command, "runs": results}, indent=2))
    write_text(out / "results.md", table(results, command))
    plot(results, out / "dual_rules.png")
    print(table(results, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
