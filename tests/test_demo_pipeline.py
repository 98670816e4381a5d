"""The pieces of the README main job on the tiny model: a cached fine-tuning stage before unlearning,
the before/after answers with ROUGE, and the feasibility report in summary.json and the last line."""

import json

import pytest
from test_train import model_dir, rows, tiny_cfg  # noqa: F401  (model_dir is a fixture)

from cel_jax.evaluation import before_after
from cel_jax.training import feasibility, retain_eval, train


def test_feasibility_report_from_rows():
    rs = [
        dict(epoch=0, retain_loss=1.0, forget_loss=9.0, dual=1.0, dual_next=1.0, dual_active=False),
        dict(epoch=1, retain_loss=3.0, forget_loss=5.0, dual=1.0, dual_next=2.0, dual_active=True),
        dict(epoch=2, retain_loss=2.5, forget_loss=4.0, dual=2.0, dual_next=3.5, dual_active=True),
        dict(epoch=2, retain_loss=1.5, forget_loss=2.0, dual=3.5, dual_next=2.5, dual_active=True),
    ]
    r = feasibility.report(rs, eps=2.0)
    assert r["final_retain_loss"] == pytest.approx(2.0) and r["constraint_satisfied"]
    assert r["feasible_fraction"] == pytest.approx(1 / 3)  # warm-start step not counted
    assert (r["lambda_first"], r["lambda_last"], r["lambda_max"]) == (1.0, 2.5, 3.5)
    assert not feasibility.report(rs, eps=1.9)["constraint_satisfied"]
    assert feasibility.report(rs, eps=1.9, tolerance=0.1)["constraint_satisfied"]
    assert "VIOLATED" in feasibility.line(feasibility.report(rs, eps=1.9))
    assert "final_model_retain_loss" not in r  # only where measured
    m = feasibility.report(rs, eps=2.0, final_model_retain_loss=2.05)
    assert m["constraint_satisfied"] and not m["final_model_satisfied"]  # two views, each reported
    assert "final model on ε's rows 2.0500 (VIOLATED)" in feasibility.line(m)
    with pytest.raises(ValueError, match="no metrics"):
        feasibility.report([], eps=1.0)


def test_rouge_recall_is_open_unlearnings():
    got = before_after.rouge_recall(["Ada was born in Kumasi, Ghana."] * 2, ["Ada was born in Kumasi.", "no"])
    assert got[0] == pytest.approx(5 / 6) and got[1] == 0.0


def test_summary_holds_the_feasibility_report(model_dir, tmp_path):  # noqa: F811
    cfg = tiny_cfg(model_dir, max_steps=None, epochs=2, export=True)
    out = train.run(cfg, str(tmp_path))
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s.keys() == out["summary"].keys()
    want = feasibility.report(rows(tmp_path), 3.0)
    for k in ("eps", "final_retain_loss", "constraint_satisfied", "feasible_fraction", "lambda_first"):
        assert s[k] == pytest.approx(want[k]), k
    last = [r["retain_loss"] for r in rows(tmp_path) if r["epoch"] == 1]
    assert s["final_retain_loss"] == pytest.approx(sum(last) / len(last)) and len(last) == 3
    assert s["lambda_last"] == rows(tmp_path)[-1]["dual_next"]
    # the final weights on ε's rows: the exported model, reloaded, gives the same loss
    got = retain_eval.retain_losses(cfg, tmp_path / "model", epoch=1)
    assert s["final_model_retain_loss"] == pytest.approx(got["eps_rows"], rel=1e-4)
    assert s["final_model_satisfied"] == (s["final_model_retain_loss"] <= s["eps"])
    assert s["final_model_retain_loss"] != pytest.approx(s["final_retain_loss"])  # a different estimator


def test_target_stage_is_cached_and_the_report_is_printed(model_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("CEL_JAX_CACHE", str(tmp_path / "cache"))
    over = {
        "target.finetune": True,
        "target.epochs": 1,
        "target.batch_size": 8,
        "target.lr": 1e-3,
        "report.enabled": True,
        "report.max_questions": 4,
        "report.max_new_tokens": 4,
        "max_steps": 2,
    }
    out = train.run(tiny_cfg(model_dir, **over), str(tmp_path / "a"))
    first = capsys.readouterr().out
    assert "teaching" in first
    targets = list((tmp_path / "cache" / "targets").iterdir())
    assert len(targets) == 1 and (targets[0] / "model" / "config.json").exists()
    assert not (targets[0] / "run" / "ckpt").exists()  # the stage's checkpoints are dropped once exported
    s = out["summary"]
    for k in ("forget_rouge_before", "forget_rouge_after", "retain_rouge_before", "retain_rouge_after"):
        assert 0.0 <= s[k] <= 1.0
    assert "retain ROUGE-L recall (4 Q)" in out["report"] and "constraint satisfied" in out["report"]
    train.run(tiny_cfg(model_dir, **over), str(tmp_path / "b"))
    assert "reusing the fine-tuned model" in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "targets").iterdir())) == 1
