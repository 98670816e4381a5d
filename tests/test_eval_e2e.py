"""End-to-end TOFU / MUSE evaluation of a tiny random model (cel_jax.evaluation.driver), plus the exactness
of the shared forward passes (prefix sharing, compat masks, GradNorm) against direct model calls.

Axes: T length, S = T-1 next-token positions, V vocab.
"""

import json
import math
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MUSE_FIXTURES, TOFU_FIXTURES
from conftest_tokenizer import make_tokenizer
from flax import nnx

from cel_jax import data as D
from cel_jax.evaluation import driver, gradnorm, registry, tofu
from cel_jax.evaluation import forward as F
from cel_jax.evaluation import metrics as M
from cel_jax.model import Llama, LlamaConfig, hf_io

N = 4  # max_items
RUN2_METRICS = (
    "forget_quality",
    "privleak",
    "mia_reference",
    "forget_Q_A_Prob",
    "forget_truth_ratio",
    "mia_min_k",
)
TOFU_OVERRIDES = dict(  # few distinct shapes: few compiles; TOFU-format fixtures (tests/fixtures/tofu)
    data_dir=str(TOFU_FIXTURES),
    max_items=N,
    max_new_tokens=6,
    bucket_multiple=64,
    generation_batch_size=8,
    progress=False,
)


def _tiny(tok, seed=0):
    cfg = LlamaConfig.tiny(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None
    )
    return Llama(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def tofu_runs(tmp_path_factory):
    """A tiny Llama + Llama-3-style tokenizer without pad token (pad = EOS, as the reference) saved as an
    HF folder; `cel-jax eval` twice: without retain logs, then with run 1's TOFU_EVAL.json as retain logs
    and the same folder as reference model."""
    root = tmp_path_factory.mktemp("tofu_eval")
    tok = make_tokenizer("llama3", pad=False)
    folder = hf_io.save_pretrained(_tiny(tok), tok, root / "model")
    cfg = driver.make_config("tofu", dict(TOFU_OVERRIDES, model=str(folder)))
    assert driver.eval_command(cfg, types.SimpleNamespace(workdir=str(root / "run1"))) == 0
    cfg2 = driver.make_config(
        "tofu",
        dict(
            TOFU_OVERRIDES,
            model=str(folder),
            retain_logs_path=str(root / "run1" / "TOFU_EVAL.json"),
            reference_model_path=str(folder),
            metrics=RUN2_METRICS,
        ),
    )
    assert driver.eval_command(cfg2, types.SimpleNamespace(workdir=str(root / "run2"))) == 0
    model, tok = hf_io.load_pretrained(str(folder))
    return root, model, tok


def _read(path):
    return json.loads(Path(path).read_text())


def test_tofu_files_names_and_layout(tofu_runs):
    root = tofu_runs[0]
    logs, summary = _read(root / "run1" / "TOFU_EVAL.json"), _read(root / "run1" / "TOFU_SUMMARY.json")
    meta = _read(root / "run1" / "TOFU_META.json")
    assert set(summary) == set(tofu.TOFU_METRICS) | {"max_items"}
    assert summary["max_items"] == N and meta["max_items"] == N
    assert set(meta["timings"]["total"]) == {"wall_s", "cpu_s"} and "generation (ROUGE)" in meta["timings"]
    assert set(tofu.TOFU_METRICS) <= set(logs)
    assert {"ra_Q_A_PERT_Prob", "wf_Q_A_PERT_Prob"} <= set(logs)  # OU logs its pre-computes too
    assert list(logs) == sorted(logs)
    missing = {"forget_quality", "privleak", "mia_reference"}
    for name in missing:
        assert logs[name]["agg_value"] is None and logs[name]["note"] and summary[name] is None
    for name in set(tofu.TOFU_METRICS) - missing:
        assert isinstance(summary[name], float) and math.isfinite(summary[name]), name
    per_item = [n for n in tofu.TOFU_METRICS if n not in ("forget_quality", "model_utility", "privleak")]
    for name in set(per_item) - {"mia_reference"} - {n for n in per_item if n.startswith("mia_")}:
        assert list(logs[name]["value_by_index"]) == [str(i) for i in range(N)], name
    for name in ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm"):
        r = logs[name]
        assert r["agg_value"] == r["auc"] and set(r) == {"forget", "holdout", "auc", "agg_value"}
        assert len(r["forget"]["value_by_index"]) == N and len(r["holdout"]["value_by_index"]) == N
    pert = logs["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]
    assert len(pert["prob"]) == 5 and len(pert["avg_loss"]) == 5  # OU's dict_transpose layout
    assert len(logs["ra_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]) == 3
    rouge = logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    assert set(rouge) == {
        "rouge1_recall",
        "rougeL_f1",
        "rougeL_recall",
        "input",
        "ground_truth",
        "generation",
    }
    row = D.load_qa(TOFU_FIXTURES, "forget01_perturbed")[0]
    assert rouge["ground_truth"] == row["answer"] and row["question"] in rouge["input"]
    assert np.isclose(
        logs["forget_Q_A_ROUGE"]["agg_value"],
        np.mean([v["rougeL_recall"] for v in logs["forget_Q_A_ROUGE"]["value_by_index"].values()]),
    )
    mu = M.harmonic_mean([logs[k]["agg_value"] for k in M.MODEL_UTILITY_KEYS])
    assert np.isclose(summary["model_utility"], mu)


def test_retain_logs_give_forget_quality_1_and_privleak_0(tofu_runs):
    root = tofu_runs[0]
    s1, s2 = _read(root / "run1" / "TOFU_SUMMARY.json"), _read(root / "run2" / "TOFU_SUMMARY.json")
    assert s2["forget_quality"] == pytest.approx(1.0)
    assert s2["privleak"] == pytest.approx(0.0, abs=1e-6)
    ref = _read(root / "run2" / "TOFU_EVAL.json")["mia_reference"]  # the model is its own reference
    scores = [v["score"] for side in ("forget", "holdout") for v in ref[side]["value_by_index"].values()]
    assert len(scores) == 2 * N and np.allclose(scores, 0.0, atol=1e-5)
    assert set(s2) == set(RUN2_METRICS) | {"max_items"}
    for name in ("forget_Q_A_Prob", "forget_truth_ratio", "mia_min_k"):
        assert s2[name] == pytest.approx(s1[name], rel=1e-6), name


_DIRECT_T = 320  # one padded length: a single compile for every direct forward below


@jax.jit
def _forward(model, ids_1T, mask_1T):
    return model(ids_1T, mask_1T)


def _direct_logp(model, item, mask=None):
    """log p(labels[t] | <t) at the labelled positions, from a plain causal forward of one sequence
    (right-padded: later tokens cannot change earlier logits)."""
    n = len(item["input_ids"])
    assert n <= _DIRECT_T
    ids = np.zeros((1, _DIRECT_T), np.int32)
    ids[0, :n] = item["input_ids"]
    full_mask = np.ones((1, _DIRECT_T), np.int32)
    if mask is not None:
        full_mask[0, :n] = mask
    logits_TV = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(full_mask)))[0, :n]
    logp_SV = np.asarray(jax.nn.log_softmax(jnp.asarray(logits_TV[:-1]), axis=-1))
    target_S = np.asarray(item["labels"])[1:]
    pos = np.flatnonzero(target_S != M.IGNORE)
    return logp_SV[pos, target_S[pos]]


def test_probabilities_equal_direct_computation(tofu_runs):
    root, model, tok = tofu_runs
    logs = _read(root / "run1" / "TOFU_EVAL.json")
    row = D.load_qa(TOFU_FIXTURES, "forget01_perturbed")[0]
    enc = lambda a: D.encode_qa(tok, row["question"], a, "chat")  # noqa: E731
    lp = _direct_logp(model, enc(row["answer"]))
    assert logs["forget_Q_A_Prob"]["value_by_index"]["0"]["prob"] == pytest.approx(
        np.exp(lp.mean()), rel=1e-5
    )
    lp_pert = _direct_logp(model, enc(row["perturbed_answer"][2]))  # scored against the shared prefix cache
    got = logs["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"][2]
    assert got == pytest.approx(np.exp(lp_pert.mean()), rel=1e-5)
    k = max(1, int(0.4 * (len(lp) - 1)))  # Min-K drops the last labelled token (EOS)
    min_k = logs["mia_min_k"]["forget"]["value_by_index"]["0"]["score"]
    assert min_k == pytest.approx(-np.sort(lp[:-1])[:k].mean(), rel=1e-5)
    p_para = np.exp(_direct_logp(model, enc(row["paraphrased_answer"])).mean())
    p_pert = np.exp(np.mean([_direct_logp(model, enc(a)).mean() for a in row["perturbed_answer"]]))
    tr = logs["forget_truth_ratio"]["value_by_index"]["0"]["score"]
    assert tr == pytest.approx(p_pert / (p_para + 1e-10), rel=1e-4)


def test_gradnorm_is_exact_per_sample(tofu_runs):
    root, model, tok = tofu_runs
    logs = _read(root / "run1" / "TOFU_EVAL.json")
    row = D.load_qa(TOFU_FIXTURES, "holdout01")[1]
    item = D.encode_qa(tok, row["question"], row["answer"], "chat")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids, labels = jnp.asarray([item["input_ids"]]), jnp.asarray([item["labels"]])
    loss = lambda p: M.mia_token_nll(nnx.merge(graphdef, p, rest)(ids), labels)[0]  # noqa: E731
    grads = jax.jit(jax.grad(loss))(params)  # unpadded, unmasked: the plain per-sample gradient
    want = np.mean([np.linalg.norm(np.ravel(g)) for g in jax.tree_util.tree_leaves(grads)])
    got = logs["mia_gradnorm"]["holdout"]["value_by_index"]["1"]["score"]
    assert got == pytest.approx(float(want), rel=1e-4)


def test_gradnorm_length_buckets_change_no_score():
    """Per-item length buckets (the default) give the scores of one common padded length, in item order,
    with None for an item that has no MIA positions."""
    tok = make_tokenizer("llama3")
    model = _tiny(tok, seed=2)
    rows = D.load_qa(TOFU_FIXTURES, "holdout01")[:4]
    items = [D.encode_qa(tok, r["question"], r["answer"][: 20 + 40 * i], "chat") for i, r in enumerate(rows)]
    items.append(dict(items[0], labels=[-100] * (len(items[0]["labels"]) - 1) + [7]))  # one target: no score
    lengths = {F.round_up(len(it["input_ids"]), 16) for it in items}
    assert len(lengths) >= 3  # the items really fall into different buckets
    pad = D.pad_id_of(tok)
    kw = dict(multiple=16, progress=False)
    got = gradnorm.gradnorm_scores(model, items, pad, per_item=True, **kw)
    want = gradnorm.gradnorm_scores(model, items, pad, per_item=False, **kw)
    assert got[-1] is None and want[-1] is None
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-5)
    singles = [gradnorm.gradnorm_scores(model, [it], pad, **kw)[0] for it in items[:2]]
    np.testing.assert_allclose(got[:2], singles, rtol=1e-6)  # order kept


def test_even_batches_keep_the_call_count_and_drop_filler_rows():
    assert [F.even_batch(n, 32) for n in (40, 64, 33, 5, 32, 0)] == [20, 32, 17, 5, 32, 32]
    for n, bs in ((40, 32), (81, 16), (7, 3)):
        b, calls = F.even_batch(n, bs), math.ceil(n / bs)
        assert b <= bs and math.ceil(n / b) == calls and b * calls - n < calls  # under one filler per call


def test_compat_masks_eos_tokens_as_the_reference():
    tok = make_tokenizer("llama3", pad=False)  # pad = EOS = <|eot_id|>
    model = _tiny(tok, seed=1)
    pad = D.pad_id_of(tok)
    assert pad == tok.eos_token_id
    q = "Where was the painter born?"
    group = [D.encode_qa(tok, q, a, "chat") for a in ("In a small harbour town.", "A town.", "Nowhere")]
    ids = np.asarray(group[0]["input_ids"])
    n_eos = int(np.sum(ids == pad))
    assert n_eos == 3  # after the system turn, after the user turn, after the answer
    assert F.key_mask(ids, pad, compat=False).all()
    assert np.array_equal(F.key_mask(ids, pad, compat=True), (ids != pad).astype(np.int32))
    for compat in (False, True):
        rows = F.group_stats(model, [group, group], pad, compat=compat, n_full=1, progress=False)[1]
        masks = [F.key_mask(it["input_ids"], pad, compat=True) if compat else None for it in group]
        for item, mask, r in zip(group, masks, rows, strict=True):
            assert r["avg_loss"] == pytest.approx(-_direct_logp(model, item, mask).mean(), rel=1e-5)
        want = _direct_logp(model, group[0], masks[0])[:-1]
        np.testing.assert_allclose(rows[0]["token_logp"], want, rtol=1e-5, atol=1e-6)
    default = F.item_stats(model, group, pad, progress=False)
    compat = F.item_stats(model, group, pad, compat=True, progress=False)
    assert all(abs(a["avg_loss"] - b["avg_loss"]) > 1e-6 for a, b in zip(default, compat, strict=True))


def test_muse_fixtures_end_to_end(tmp_path):
    tok = make_tokenizer("llama2")  # no pad, no chat template: MUSE's Llama-2 base-model setup
    model = _tiny(tok, seed=2)
    cfg = dict(
        data_dir=str(MUSE_FIXTURES), verbmem_max_new_tokens=8, knowmem_max_new_tokens=5, progress=False
    )
    out = driver.evaluate_muse(model, tok, cfg, tmp_path, verbose=False)
    logs, summary = _read(tmp_path / "MUSE_EVAL.json"), _read(tmp_path / "MUSE_SUMMARY.json")
    assert out["summary"] == summary
    names = set(driver.muse.MUSE_METRICS)
    assert set(summary) == names | {"max_items"} and names | {"mia_min_k"} <= set(logs)
    assert summary["privleak"] is None and "note" in logs["privleak"]
    assert logs["mia_min_k"]["agg_value"] == logs["mia_min_k"]["auc"]  # privleak's pre-compute, logged
    for name in ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE"):
        vbi = logs[name]["value_by_index"]
        assert len(vbi) == 5
        assert np.isclose(logs[name]["agg_value"], np.mean([v["rougeL_f1"] for v in vbi.values()]))
    shots = D.load_muse(MUSE_FIXTURES, "knowmem", "forget_qa_icl")
    first_q = D.load_muse(MUSE_FIXTURES, "knowmem", "forget_qa")[0]["question"]
    prompt = logs["forget_knowmem_ROUGE"]["value_by_index"]["0"]["input"]
    assert prompt.startswith(f"Question: {shots[0]['question']}\nAnswer: {shots[0]['answer']}\n\n")
    assert prompt.endswith(f"Question: {first_q}\nAnswer: ")
    gt = D.load_muse(MUSE_FIXTURES, "verbmem", "forget")[0]["gt"]
    assert logs["forget_verbmem_ROUGE"]["value_by_index"]["0"]["ground_truth"] == gt
    for name in ("extraction_strength", "exact_memorization"):
        assert len(logs[name]["value_by_index"]) == 5 and 0 <= summary[name] <= 1
    # the retrained model's logs: privleak = 0 against itself
    cfg2 = dict(cfg, retain_logs_path=str(tmp_path / "MUSE_EVAL.json"), metrics=("privleak",))
    assert driver.evaluate_muse(model, tok, cfg2, verbose=False)["summary"]["privleak"] == pytest.approx(0.0)


def test_missing_inputs_are_reported_not_invented():
    tok = make_tokenizer("llama3", pad=False)
    cfg = dict(TOFU_OVERRIDES, metrics=("mia_reference",))
    out = driver.evaluate_tofu(_tiny(tok), tok, cfg, verbose=False)  # no reference model: nothing to run
    assert out["summary"] == {"mia_reference": None, "max_items": N}
    assert "reference model" in out["logs"]["mia_reference"]["note"]
    # the other metrics' jobs: tests/test_metric_registry.py
    assert registry.needed_jobs("tofu", ["privleak", "mia_gradnorm"]) == {
        "forget",
        "holdout",
        "token_arrays",
        "gradnorm",
    }


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match=r"unknown TOFU metrics \['nope'\]; choose from \["):
        tofu.validate(driver.make_config("tofu", {"metrics": ("forget_Q_A_Prob", "nope")}))
    with pytest.raises(ValueError, match="unknown tofu eval config keys"):
        driver.make_config("tofu", {"max_item": 3})
    with pytest.raises(ValueError, match="unknown benchmark"):
        driver.make_config("wmdp")
    with pytest.raises(ValueError, match="unknown TOFU forget split"):
        tofu.validate(driver.make_config("tofu", {"forget_split": "forget02"}))
    with pytest.raises(ValueError, match="needs --workdir"):
        driver.eval_command(driver.make_config("tofu"), types.SimpleNamespace(workdir=None))


def test_subsets_select_rows_of_single_sets():
    cfg = tofu.default_config()
    cfg.data_dir = str(TOFU_FIXTURES)  # 8 forget / retain_perturbed / holdout rows, 6 real authors / facts
    whole = tofu.load_sets(cfg, {"retain", "ra", "wf", "forget", "holdout"})
    cfg.subsets = "retain=0:8:2;ra=0:6:2;wf=3"
    rows = tofu.load_sets(cfg, {"retain", "ra", "wf", "forget", "holdout"})
    assert [r["question"] for r in rows["retain"]] == [whole["retain"][i]["question"] for i in range(0, 8, 2)]
    assert len(rows["ra"]) == 3 and rows["ra"] == whole["ra"][0:6:2] and rows["wf"] == [whole["wf"][3]]
    assert rows["forget"] == whole["forget"] and rows["holdout"] == whole["holdout"]  # untouched: whole
    assert len(rows["holdout"]) == 8
    for bad, msg in (
        ("retian=0:4", "not 'set=rows'"),
        ("retain=0:4:0", "step"),
        ("retain", "not 'set=rows'"),
    ):
        cfg.subsets = bad
        with pytest.raises(ValueError, match=msg):
            tofu.validate(cfg)
    cfg.subsets = "ra=0:5,150"  # python slices clamp; single rows must exist
    with pytest.raises(ValueError, match="exceeds the 6 items"):
        tofu.load_sets(cfg, {"ra"})
