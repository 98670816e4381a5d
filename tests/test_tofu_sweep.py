"""bench.tofu_sweep on a tiny random model: the PDU runs use the requested rule and ε, the report's bound
column is the feasibility report's, the Pareto front is computed, unfinished runs are listed, and
`--reuse` keeps an earlier call's rows only for runs without a stage and only on the same target."""

import contextlib
import copy
import json

import pytest
from conftest import TOFU_FIXTURES
from tofu_tiny import FIXTURE_FORGET_ROWS, TINY

from bench import tofu_mini, tofu_sweep


def test_pareto_front():
    pts = {"a": (0.3, 0.5), "b": (0.2, 0.9), "c": (0.2, 0.4), "d": (0.3, 0.5)}
    assert tofu_sweep.pareto(pts) == {"a", "b", "d"}  # c is beaten by a; ties do not dominate


def test_entries_set_the_rule_the_bound_and_the_weight():
    e = tofu_sweep.entries()
    n_long = sum(len(r[3]) for r in tofu_sweep.LONG_RUNS)
    assert (
        len(e)
        == 2 * len(tofu_sweep.PDU_LRS) * len(tofu_sweep.EPS_ALPHAS) + 2 * len(tofu_sweep.WEIGHTS) + n_long
    )
    c = tofu_sweep.config(e["pdu_gda_eps0.25"], tofu_mini.PRESETS["mini"], "t", str(TOFU_FIXTURES))
    assert (c.dual.rule, c.dual.eps, c.dual.eps_alpha, c.dual.warmup_epochs) == ("gda", None, 0.25, 0)
    assert c.dual.normalize_forget and c.dual.relative and c.solver == "primal_dual"
    assert c.optim.lr == tofu_mini.PRESETS["mini"]["unlearn"]["lr"]  # the protocol's rate
    c = tofu_sweep.config(e["pdu_alm_lr5e-5_eps0.1"], tofu_mini.PRESETS["mini"], "t", str(TOFU_FIXTURES))
    assert (c.optim.lr, c.dual.rule, c.dual.eps_alpha) == (5e-5, "alm", 0.1)
    assert c.epochs == tofu_mini.PRESETS["mini"]["unlearn"]["epochs"]
    c = tofu_sweep.config(e["pdu_alm_lr5e-5_ep8_eps0.5"], tofu_mini.PRESETS["mini"], "t", str(TOFU_FIXTURES))
    assert (c.optim.lr, c.epochs, c.dual.rule, c.dual.eps_alpha) == (5e-5, 8, "alm", 0.5)
    c = tofu_sweep.config(e["npo_alpha5"], tofu_mini.PRESETS["mini"], "t", str(TOFU_FIXTURES))
    assert (c.method, c.solver, c.method_args.alpha) == ("npo", "scalarized", 5.0)


@contextlib.contextmanager
def tiny_sweep():
    """The sweep on the tiny protocol: the fixture's forget rows, one ε and one weight."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tofu_mini, "FORGET_ROWS", FIXTURE_FORGET_ROWS)
        mp.setitem(tofu_mini.PRESETS, "mini", TINY)
        mp.setattr(tofu_sweep, "EPS_ALPHAS", (0.5,))
        mp.setattr(tofu_sweep, "WEIGHTS", (1.0,))
        yield


@pytest.fixture(scope="module")
def sweep(tofu_mini_run):
    """Two runs, then a call with one more; the target, retain model and their evaluations are the tiny
    tofu_mini run's (same protocol, same work dir)."""
    root = tofu_mini_run[0]
    names = ["pdu_alm_eps0.5", "grad_diff_alpha1"]
    with tiny_sweep():
        res = tofu_sweep.run(root / "work", root / "sweep_out", names, str(TOFU_FIXTURES), "unused")
        # a later call with one more run: the finished ones come from their stages
        more = tofu_sweep.run(
            root / "work", root / "sweep_out", [*names, "npo_alpha1"], str(TOFU_FIXTURES), "unused"
        )
        # a report of what is finished: nothing new starts, the rest is listed
        part = tofu_sweep.run(
            root / "work", root / "part_out", [*names, "pdu_gda_eps0.5"], str(TOFU_FIXTURES), "unused", True
        )
    assert part["not_run"] == ["pdu_gda_eps0.5"] and set(part["rows"]) == set(names)
    assert not (root / "work" / "sweep" / "pdu_gda_eps0.5").exists()
    return root, res, more


def test_sweep_runs_and_reports(sweep):
    root, res, more = sweep
    pdu = res["rows"]["pdu_alm_eps0.5"]
    done = json.loads((root / "work" / "sweep" / "pdu_alm_eps0.5" / "DONE.json").read_text())["summary"]
    assert done["dual_rule"] == "alm" and done["eps"] == pytest.approx(pdu["eps"]) and pdu["eps"] > 0
    assert pdu["constraint_satisfied"] == (pdu["final_model_retain_loss"] <= pdu["eps"])  # the final model
    assert pdu["last_epoch_satisfied"] == (pdu["final_retain_loss"] <= pdu["eps"])
    assert pdu["final_model_retain_loss"] == pytest.approx(done["final_model_retain_loss"])
    tl = res["references"]["target_retain_loss"]
    assert tl["eps_rows"] == pytest.approx(pdu["eps"] / 1.5, rel=1e-4)  # ε = (1 + 0.5)·L_r(target)
    assert res["rows"]["grad_diff_alpha1"]["eps"] is None  # baselines have no bound to report
    assert set(res["pareto_front"]) <= {*res["rows"], "target"} and res["pareto_front"]
    for name in ("results.md", "results.json", "eps_diagonal.png", "pareto.png"):
        assert (root / "sweep_out" / name).stat().st_size > 100
    md = (root / "sweep_out" / "results.md").read_text()
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


def _rerun(root, names, out, reuse):
    with tiny_sweep():
        return tofu_sweep.run(root / "work", out, names, str(TOFU_FIXTURES), "unused", reuse=reuse)


def test_reuse_keeps_earlier_rows_only_where_no_stage_and_only_on_the_same_target(sweep, tmp_path):
    root, res, _ = sweep
    old = copy.deepcopy(res)
    old["rows"]["pdu_gda_eps0.5"] = {**res["rows"]["pdu_alm_eps0.5"], "label": "an earlier gda row"}
    old["rows"]["pdu_alm_eps0.5"] = {**res["rows"]["pdu_alm_eps0.5"], "label": "stale"}
    names = ["pdu_alm_eps0.5", "pdu_gda_eps0.5"]
    got = _rerun(root, names, tmp_path / "out", old)
    assert got["reused"] == ["pdu_gda_eps0.5"] and not got["not_run"]
    assert got["rows"]["pdu_gda_eps0.5"]["label"] == "an earlier gda row"  # kept, not run
    assert not (root / "work" / "sweep" / "pdu_gda_eps0.5").exists()
    assert got["rows"]["pdu_alm_eps0.5"] == res["rows"]["pdu_alm_eps0.5"]  # a finished stage wins
    assert "(`--reuse`; their stages were not in this work dir): pdu_gda_eps0.5." in (
        (tmp_path / "out" / "results.md").read_text()
    )
    other = copy.deepcopy(old)
    other["references"]["target"]["model_utility"] += 0.01  # rows of another target must not mix in
    with pytest.raises(ValueError, match="another target or retain model"):
        _rerun(root, names, tmp_path / "out2", other)
