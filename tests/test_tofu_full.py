"""bench.tofu_full (the accelerator pipeline of bench/gpu_check.sh) on a tiny random model, forget01 only:
every stage runs and is cached, the table holds computed metrics, and the deadline skips (and reports)
stages instead of starting them."""

import json

import pytest
from conftest import TOFU_FIXTURES
from tiny_model import make_tiny_model_dir

from bench import tofu_full

STAGES = ("target", "retain99", "eval_retain99", "eval_target01", "pdu01", "pdu01/eval")


def _args(root, model, *extra):
    a = tofu_full.build_parser().parse_args(
        [
            "--smoke",
            "--splits=forget01",
            f"--model={model}",
            f"--data={TOFU_FIXTURES}",  # TOFU-format fixtures (tests/fixtures/tofu)
            f"--workdir={root / 'work'}",
            f"--out={root / 'out'}",
            "--batch=8",
            "--dtype=float32",
            *extra,
        ]
    )
    a.argv, (a.rows, a.max_steps, a.max_items) = ["--smoke"], ("0:8", 2, 2)
    return a


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("tofu_full")
    model = make_tiny_model_dir(root / "tiny")
    return root, model, tofu_full.run(_args(root, model))


def test_every_stage_and_the_table(full):
    root, _, res = full
    for stage in STAGES:
        assert (root / "work" / stage / "DONE.json").exists(), stage
    rows = res["splits"]["forget01"]
    assert set(rows) == {"retain99 (reference)", "target", "PDU"}
    assert rows["retain99 (reference)"]["summary"]["forget_quality"] is None  # it is the reference
    for name in ("target", "PDU"):
        assert 0.0 <= rows[name]["summary"]["forget_quality"] <= 1.0
        assert rows[name]["summary"]["max_items"] == 2
    assert res["curves"]["pdu01"]["dual"][0] == 100.0 and len(res["curves"]["pdu01"]["dual"]) == 2
    assert res["skipped"] == [] and set(res["stage_s"]) == set(STAGES)
    saved = json.loads((root / "out" / "results.json").read_text())
    assert saved["splits"] == res["splits"]
    assert "| PDU |" in (root / "out" / "results.md").read_text()


def test_deadline_skips_new_stages_and_keeps_finished_ones(full):
    root, model, res = full
    a = _args(root, model, "--splits=forget01,forget05", "--deadline-min=0")
    again = tofu_full.run(a)
    assert again["splits"]["forget01"] == res["splits"]["forget01"]  # read back from the cache
    assert again["skipped"] == ["retain95", "eval_retain95", "eval_target05", "pdu05", "pdu05/eval"]
    assert "Not run (deadline of 0.0 min reached" in (root / "out" / "results.md").read_text()


def test_bad_input_before_work(tmp_path):
    a = _args(tmp_path, "m", "--splits=forget02")
    with pytest.raises(ValueError, match="unknown TOFU forget splits"):
        tofu_full.run(a)
    a = _args(tmp_path, "m", f"--data={tmp_path}")
    with pytest.raises(FileNotFoundError, match="full.jsonl"):
        tofu_full.run(a)
    assert not list(tmp_path.iterdir())
