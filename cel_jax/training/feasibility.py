"""Did the run keep its promise? The feasibility report of an unlearning run, from its metrics.jsonl rows.

`final_retain_loss` is the mean training retain loss over the last epoch's steps (each step's L_r is
measured on its retain micro-batches before the update, the quantity the dual rule sees);
`constraint_satisfied` is final_retain_loss ≤ ε + tolerance; `feasible_fraction` counts the steps
after the warm start whose L_r ≤ ε.

`final_model_retain_loss` is the final model's retain loss on the rows ε was measured on (`dual.eps_ref_items`
of the retain set; ε = (1 + α)·L_r(θ₀) is the same estimator at θ₀), and `final_model_satisfied` compares
it with ε + tolerance. The two views differ when the retain set is sampled: the last epoch's retain partners
are a random draw of the retain set (with replacement) seen at ten different weights, so the last-epoch mean
can sit above ε for a model that did not move (TOFU-mini forget01: the unchanged target reads 0.0518 on
the last epoch's partners against ε = 1.1·0.0421 = 0.0463, results/tofu_sweep); the final model on ε's
own rows is the promise as stated.
"""

from __future__ import annotations

import math


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def report(
    rows: list[dict], eps: float, tolerance: float = 0.0, final_model_retain_loss: float | None = None
) -> dict:
    """The feasibility fields of summary.json (rows: metrics.jsonl, one per optimizer step;
    final_model_retain_loss: L_r of the final weights on ε's reference rows, where measured)."""
    if not rows:
        raise ValueError("no metrics rows: the run made no step")
    last_epoch = max(r["epoch"] for r in rows)
    last = [r for r in rows if r["epoch"] == last_epoch]
    final = _mean(r["retain_loss"] for r in last)
    after_warm = [r for r in rows if r.get("dual_active", True)]
    lambdas = [r["dual"] for r in rows] + [rows[-1]["dual_next"]]
    final_model = {}
    if final_model_retain_loss is not None:
        final_model = {
            "final_model_retain_loss": final_model_retain_loss,
            "final_model_satisfied": bool(final_model_retain_loss <= eps + tolerance),
        }
    return {
        "eps": eps,
        "tolerance": tolerance,
        "final_retain_loss": final,
        "final_retain_minus_eps": final - eps,
        "constraint_satisfied": bool(final <= eps + tolerance),
        "feasible_fraction": _mean(float(r["retain_loss"] <= eps) for r in after_warm),
        "final_forget_loss": _mean(r["forget_loss"] for r in last),
        "lambda_first": rows[0]["dual"],
        "lambda_last": rows[-1]["dual_next"],
        "lambda_max": max(lambdas),
        "last_epoch": last_epoch,
        **final_model,
    }


def line(rep: dict) -> str:
    """One human line: the constraint's verdict with its numbers."""
    ok = "satisfied" if rep["constraint_satisfied"] else "VIOLATED"
    frac = rep["feasible_fraction"]
    frac_s = "" if math.isnan(frac) else f", feasible on {frac:.0%} of the steps after the warm start"
    tol = f" + tolerance {rep['tolerance']:.3g}" if rep["tolerance"] else ""
    model = ""
    if "final_model_retain_loss" in rep:
        ok_m = "satisfied" if rep["final_model_satisfied"] else "VIOLATED"
        model = f"; final model on ε's rows {rep['final_model_retain_loss']:.4f} ({ok_m})"
    return (
        f"constraint {ok}: retain loss {rep['final_retain_loss']:.4f} (mean of the last epoch) vs "
        f"ε = {rep['eps']:.4f}{tol} ({rep['final_retain_minus_eps']:+.4f}){model};"
        f" λ {rep['lambda_first']:.4g} → {rep['lambda_last']:.4g} (max {rep['lambda_max']:.4g}){frac_s}"
    )
