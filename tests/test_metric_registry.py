"""The metric registry (cel_jax.evaluation.registry) and the shared suite runner: how jobs follow from the
requested metrics, unknown names, and a toy metric added in this one file that runs through `evaluate_tofu`
on the TOFU fixtures and lands in the results.
"""

import json

import numpy as np
import pytest
from conftest import TOFU_FIXTURES
from conftest_tokenizer import make_tokenizer
from flax import nnx

from cel_jax.evaluation import driver, muse, registry, tofu
from cel_jax.model import Llama, LlamaConfig

TOY = "forget_answer_tokens"  # mean number of answer tokens of the forget items


@pytest.fixture
def toy_metric():
    """Register the toy metric (the whole of adding a metric), remove it afterwards."""

    @registry.register_metric("tofu", TOY, needs=("forget",))
    def forget_answer_tokens(run):
        counts = [g[0]["n_tokens"] for g in run.values["stats:forget"]]
        return {
            "agg_value": float(np.mean(counts)),
            "value_by_index": {str(i): {"score": c} for i, c in enumerate(counts)},
        }

    yield TOY
    registry.unregister_metric("tofu", TOY)


def test_jobs_follow_from_the_requested_metrics():
    assert registry.needed_jobs("tofu", ["forget_Q_A_Prob"]) == {"forget"}
    assert registry.needed_jobs("tofu", ["forget_quality"]) == {"forget"}  # via forget_truth_ratio
    assert registry.needed_jobs("tofu", ["model_utility"]) == {
        "retain",
        "gen:retain",
        "ra",
        "gen:ra",
        "wf",
        "gen:wf",
    }
    assert registry.needed_jobs("tofu", ["privleak"]) == {"forget", "holdout", "token_arrays"}
    assert registry.needed_jobs("tofu", ["mia_reference"]) == {"reference", "forget", "holdout"}
    assert registry.needed_jobs("muse", ["privleak", "exact_memorization"]) == {"mia", "verbmem"}
    # OU logs its pre-computes: every job-only metric whose jobs ran; derived ones only on request
    logged = registry.logged("tofu", ["ra_Q_A_Prob"], {"ra"})
    assert logged == ["ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "ra_Q_A_Prob_normalised", "ra_Truth_Ratio"]
    assert "forget_quality" not in registry.logged("tofu", ["forget_Q_A_Prob"], {"forget"})


def test_every_suite_metric_is_registered():
    assert set(tofu.TOFU_METRICS) <= set(registry.known("tofu"))
    assert set(muse.ALLOWED) == set(registry.known("muse"))


def test_unknown_metric_names_it_and_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown TOFU metrics \['nope'\]; choose from .*forget_Q_A_Prob"):
        registry.needed_jobs("tofu", ["forget_Q_A_Prob", "nope"])
    with pytest.raises(ValueError, match=r"unknown MUSE metrics \['forget_Q_A_Prob'\].*privleak"):
        muse.validate(driver.make_config("muse", {"metrics": ("forget_Q_A_Prob",)}))
    with pytest.raises(ValueError, match="uses 'nope', which is not registered"):
        registry.register_metric("tofu", "bad", uses=("nope",))(lambda run: None)
    assert "bad" not in registry.known("tofu")
    registry.register_metric("tofu", "misspelt", needs=("fogret",))(lambda run: None)
    try:
        with pytest.raises(ValueError, match=r"no job runs \['fogret'\] \(needed by \['misspelt'\]\)"):
            registry.check_jobs("tofu", registry.needed_jobs("tofu", ["misspelt"]))
    finally:
        registry.unregister_metric("tofu", "misspelt")
    registry.check_jobs("tofu", registry.needed_jobs("tofu", registry.known("tofu")))
    registry.check_jobs("muse", registry.needed_jobs("muse", registry.known("muse")))


def test_a_metric_added_in_one_file_runs_through_the_runner(toy_metric, tmp_path):
    tok = make_tokenizer("llama3", pad=False)
    cfg = LlamaConfig.tiny(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None
    )
    model = Llama(cfg, rngs=nnx.Rngs(0))
    overrides = dict(
        data_dir=str(TOFU_FIXTURES), max_items=3, bucket_multiple=64, progress=False, metrics=(toy_metric,)
    )
    out = driver.evaluate_tofu(model, tok, overrides, tmp_path, verbose=False)
    summary = json.loads((tmp_path / "TOFU_SUMMARY.json").read_text())
    logs = json.loads((tmp_path / "TOFU_EVAL.json").read_text())
    assert summary == out["summary"] and set(summary) == {toy_metric, "max_items"}
    assert summary[toy_metric] > 0 and len(logs[toy_metric]["value_by_index"]) == 3
    assert "forget_Q_A_Prob" in logs  # the forget job's other metrics are logged too, as OU does
    assert set(out["timings"]) == {"data + tokenisation", "forward: forget", "total"}
    # once registered, the toy also rides along whenever its job runs
    out = driver.evaluate_tofu(model, tok, dict(overrides, metrics=("forget_truth_ratio",)), verbose=False)
    assert out["logs"][toy_metric]["agg_value"] == summary[toy_metric]
