"""bench.tofu_sweep on a tiny random model: the PDU runs use the requested rule and ε, the report's bound
column is the feasibility report's, the Pareto front is computed, unfinished runs are listed."""

import json

import pytest
from conftest import TOFU_FIXTURES
from test_tofu_mini import FIXTURE_FORGET_ROWS, TINY
from tiny_model import make_tiny_model_dir

from bench import tofu_mini, tofu_sweep


def test_pareto_front():
    pts = {"a": (0.3, 0.5), "b": (0.2, 0.9), "c": (0.2, 0.4), "d": (0.3, 0.5)}
    assert tofu_sweep.pareto(pts) == {"a", "b", "d"}  # c is beaten by a; ties do not dominate


def test_entries_set_the_rule_the_bound_and_the_weight():
    e = tofu_sweep.entries()
    assert len(e) == 2 * len(tofu_sweep.EPS_ALPHAS) + 2 * len(tofu_sweep.WEIGHTS)
    c = tofu_sweep.config(e["pdu_gda_eps0.25"], tofu_mini.PRESETS["mini"], "t", str(TOFU_FIXTURES))
    assert (c.dual.rule, c.dual.eps, c.dual.eps_alpha, c.dual.warmup_epochs) == ("gda", None, 0.25, 0)
    assert c.dual.normalize_forget and c.dual.relative and c.solver == "primal_dual"
    c = tofu_sweep.config(e["npo_alpha5"], tofu_mini.PRESETS["mini"], "t", str(TOFU_FIXTURES))
    assert (c.method, c.solver, c.method_args.alpha) == ("npo", "scalarized", 5.0)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("tofu_sweep")
    model = make_tiny_model_dir(root / "tiny")
    names = ["pdu_alm_eps0.5", "grad_diff_alpha1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tofu_mini, "FORGET_ROWS", FIXTURE_FORGET_ROWS)
        mp.setitem(tofu_mini.PRESETS, "mini", TINY)
        mp.setattr(tofu_sweep, "EPS_ALPHAS", (0.5,))
        mp.setattr(tofu_sweep, "WEIGHTS", (1.0,))
        res = tofu_sweep.run(root / "work", root / "out", names, str(TOFU_FIXTURES), str(model))
        # a later call with one more run: the finished ones come from their stages
        more = tofu_sweep.run(
            root / "work", root / "out", [*names, "npo_alpha1"], str(TOFU_FIXTURES), "unused"
        )
    return root, res, more


def test_sweep_runs_and_reports(sweep):
    root, res, more = sweep
    pdu = res["rows"]["pdu_alm_eps0.5"]
    done = json.loads((root / "work" / "sweep" / "pdu_alm_eps0.5" / "DONE.json").read_text())["summary"]
    assert done["dual_rule"] == "alm" and done["eps"] == pytest.approx(pdu["eps"]) and pdu["eps"] > 0
    assert pdu["constraint_satisfied"] == (pdu["final_retain_loss"] <= pdu["eps"])
    assert res["rows"]["grad_diff_alpha1"]["eps"] is None  # baselines have no bound to report
    assert set(res["pareto_front"]) <= {*res["rows"], "target"} and res["pareto_front"]
    for name in ("results.md", "results.json", "eps_diagonal.png", "pareto.png"):
        assert (root / "out" / name).stat().st_size > 100
    md = (root / "out" / "results.md").read_text()
    assert "PDU alm, ε = 1.5·L_r(target)" in md and "GradDiff, retain weight α = 1" in md
    assert "Not run yet" not in md
    assert more["rows"]["pdu_alm_eps0.5"] == pdu  # cached, not rerun
    assert "npo_alpha1" in more["rows"] and not more["not_run"]


def test_unfinished_runs_are_listed(sweep, tmp_path):
    root, res, _ = sweep
    half = {**res, "not_run": ["pdu_gda_eps0.5"]}
    assert "Not run yet (the command runs them and keeps the rows above): pdu_gda_eps0.5." in (
        tofu_sweep.markdown(half)
    )
