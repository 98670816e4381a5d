"""The TOFU-mini report: the results table as Markdown, the plots (forget quality vs model utility, the
primal-dual runs' λ and constraint, forget-loss curves), and the value helpers the TOFU benchmarks share
(strict-JSON numbers, reference values compared, table cells, the machine line)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Collection
from pathlib import Path

TABLE = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE", "privleak")


def finite(x):
    """NaN / inf -> None, recursively (strict JSON; fine-tuning rows have no retain loss)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def same_values(have, was, rel: float = 1e-9) -> bool:
    """Equal up to float noise, element by element (None only equals None): an earlier run's reference
    values against this run's, before its rows are kept (`--reuse`)."""
    return all(
        h == w or (None not in (h, w) and abs(h - w) <= rel * max(1.0, abs(w)))
        for h, w in zip(have, was, strict=True)
    )


def fmt(v) -> str:
    """A table cell: – for None; floats with 1 decimal from 10 up, 3 significant digits when nonzero
    under 0.01, else 3 decimals."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
    return str(v)


def markdown(res: dict) -> str:
    """The results table (one row per model: TABLE metrics, train and eval seconds) with its legend."""
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
        vals = [fmt(row["summary"].get(k)) for k in TABLE]
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
    """The plot label of a row: SHORT's, else its table label up to the parenthesis."""
    return SHORT.get(name, label.split(" (")[0])


def plots(res: dict, out: Path, primal_dual: Collection[str]) -> list[str]:
    """fq_vs_mu.png, pdu_dual.png (the runs named in `primal_dual`, when any ran) and
    forget_loss_curves.png in `out`; returns the names written."""
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

    duals = {n: c for n, c in res["curves"].items() if n in primal_dual}
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


def machine() -> str:
    """The machine line of a report: CPU model, cores and the load at the end."""
    from bench.throughput.common import cpu_name

    cpu = cpu_name() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, load at the end {tuple(round(x, 1) for x in os.getloadavg())}"
