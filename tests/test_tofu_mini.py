"""bench.tofu_mini end to end on a tiny random model: every stage runs, is cached, and the report holds the
table's metrics (computed, not invented), the PDU dual curves and the plots."""

import json
import types
from pathlib import Path

import pytest
from conftest import TOFU_FIXTURES
from tofu_tiny import FIXTURE_FORGET_ROWS, N_FORGET, TINY

from bench import tofu_mini


@pytest.fixture
def fixture_data(monkeypatch):
    monkeypatch.setattr(tofu_mini, "FORGET_ROWS", FIXTURE_FORGET_ROWS)
    monkeypatch.setitem(tofu_mini.PRESETS, "tiny", TINY)
    return str(TOFU_FIXTURES)


def test_every_stage_and_the_report(tofu_mini_run):
    root, res = tofu_mini_run
    work, out = root / "work", root / "out"
    for stage in ("target", "retain", "eval_retain", "eval_target", "pdu", "pdu/eval", "grad_diff/eval"):
        assert (work / stage / "DONE.json").exists(), stage
    for stage in ("target", "retain", "pdu", "grad_diff"):  # finished: checkpoint deleted, model kept
        assert not (work / stage / "ckpt").exists() and (work / stage / "model" / "config.json").exists()
    # the target saw the forget rows, the retain model did not
    cfg_t = json.loads((work / "target" / "metrics.jsonl").read_text().splitlines()[0])
    assert cfg_t["step"] == 1
    assert set(res["rows"]) == {"retain", "target", "pdu", "grad_diff"}
    for name in ("target", "pdu", "grad_diff"):
        s = res["rows"][name]["summary"]
        assert s["forget_quality"] is not None and 0.0 <= s["forget_quality"] <= 1.0
        assert s["privleak"] is not None and s["subsets"] == TINY["subsets"]
    # the retain model has no retain logs of its own: forget_quality is missing, never invented
    assert res["rows"]["retain"]["summary"]["forget_quality"] is None
    pdu = res["curves"]["pdu"]
    # forget01: N_FORGET rows / 8 per step x 2 epochs
    assert len(pdu["dual"]) == N_FORGET // 8 * 2 and pdu["dual"][0] == 100.0
    assert not pdu["dual_active"][0] and pdu["dual_active"][-1]  # one warm-start epoch with λ fixed
    assert set(res["plots"]) == {"fq_vs_mu.png", "pdu_dual.png", "forget_loss_curves.png"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"]["pdu"]["summary"] == res["rows"]["pdu"]["summary"]
    md = (out / "results.md").read_text()
    assert "PDU (logit margin, primal-dual)" in md and "forget_quality" in md


def test_rerun_is_cached(tofu_mini_run, fixture_data):
    root, res = tofu_mini_run
    again = tofu_mini.run("tiny", root / "work", root / "out2", ["pdu"], "unused-model", fixture_data)
    assert again["rows"]["pdu"]["summary"] == res["rows"]["pdu"]["summary"]
    # the recorded command regenerates this table: its own work dir and output folder, its methods
    assert f"--workdir {(root / 'work').resolve()}" in again["command"]
    assert f"--out {(root / 'out2').resolve()}" in again["command"] and "--methods pdu" in again["command"]


def test_bad_input_before_work(tmp_path):
    with pytest.raises(ValueError, match="unknown methods"):
        tofu_mini.run("mini", tmp_path, tmp_path, ["pdu", "nope"], "m", str(TOFU_FIXTURES))
    with pytest.raises(ValueError, match="unknown preset"):
        tofu_mini.run("huge", tmp_path, tmp_path, ["pdu"], "m", str(TOFU_FIXTURES))
    with pytest.raises(FileNotFoundError, match="full.jsonl"):
        tofu_mini.run("mini", tmp_path, tmp_path, ["pdu"], "m", str(tmp_path))
    with pytest.raises(ValueError, match="ft_epochs must be positive"):
        tofu_mini.run("mini", tmp_path, tmp_path, ["pdu"], "m", str(TOFU_FIXTURES), ft_epochs=0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", list(tofu_mini.ALL))
def test_every_method_config_is_valid(name):
    """Each table entry's config passes the engine's checks (no model is loaded)."""
    from cel_jax.training import checks, engine

    c = tofu_mini.unlearn_cfg(tofu_mini.PRESETS["mini"], "target", str(TOFU_FIXTURES), name)
    c.batch_size = 8  # a multiple of the 8 fake test devices
    checks.validate_config(c, "unlearn")
    spec = engine.make_spec(c, types.SimpleNamespace(n_layers=30, d_model=576), "unlearn")
    assert spec.method == tofu_mini.ALL[name][0] and spec.solver == tofu_mini.ALL[name][1]
    assert c.dual.lr == (50.0 if name == "pdu_eta50" else 5.0)
    if name == "pdu_fixed":
        assert spec.alpha == 100.0  # λ fixed at the primal-dual runs' λ0


def test_finished_stage_drops_its_checkpoint_unless_kept(tmp_path, monkeypatch):
    """A done stage's Orbax checkpoint is deleted (the exported model stays); kept on request, and kept
    whenever there is no exported model to fall back on."""
    from cel_jax.training import train

    def fake_run(cfg, workdir, mode):
        stage = Path(workdir)
        (stage / "ckpt" / "1").mkdir(parents=True)
        if cfg["export"]:
            (stage / "model").mkdir()
        (stage / "metrics.jsonl").write_text('{"step": 1}\n')
        return {"summary": {"dual": 0.0}}

    monkeypatch.setattr(train, "run", fake_run)
    cases = (("a", True, False, False), ("b", True, True, True), ("c", False, False, True))
    for name, export, keep, left in cases:
        info = tofu_mini.train_stage(tmp_path / name, {"export": export}, "finetune", keep)
        assert info["final_row"] == {"step": 1} and (tmp_path / name / "DONE.json").exists()
        assert (tmp_path / name / "ckpt").exists() == left, name
