"""Tests of cel_jax.evaluation.metrics / report against hand values, scipy, rouge_score and torch ports of OU.

Axis legend: B batch, T length, S = T-1 shifted positions, V vocab.
"""

import itertools
import json
import math
import os
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from conftest import MUSE_FIXTURES

from cel_jax.evaluation import metrics as M
from cel_jax.evaluation import report as R

IGN = M.IGNORE


def _rand_batch(seed=0, B=3, T=7, V=11, scale=3.0):
    rng = np.random.default_rng(seed)
    logits_BTV = (rng.normal(size=(B, T, V)) * scale).astype(np.float32)
    labels_BT = rng.integers(0, V, size=(B, T))
    labels_BT[:, :2] = IGN  # prompt
    labels_BT[1, :4] = IGN  # a shorter answer
    labels_BT[2, -1] = IGN  # right padding
    return logits_BTV, labels_BT


# ------------------------------------------------------------------ torch ports of OU (trusted reference)


def _ou_evaluate_probability(torch, logits, labels):
    """OU src/evals/metrics/utils.py::evaluate_probability with the logits given."""
    shifted_labels = labels[..., 1:].contiguous()
    logits = logits[..., :-1, :].contiguous()
    loss_function = torch.nn.CrossEntropyLoss(ignore_index=IGN, reduction="none")
    losses = loss_function(logits.transpose(-1, -2), shifted_labels).sum(dim=-1)
    num_token_gt = (labels != IGN).sum(-1)
    avg_losses = losses / num_token_gt
    return avg_losses.numpy(), torch.exp(-avg_losses).numpy()


def _ou_tokenwise(torch, logits, labels):
    """OU tokenwise_logprobs + tokenwise_vocab_logprobs (input_ids = labels where labelled)."""
    input_ids = torch.where(labels == IGN, torch.zeros_like(labels), labels)
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)[:, :-1, :]
    target = torch.gather(log_probs, dim=2, index=input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = []
    for i in range(logits.shape[0]):
        actual = (labels[i] != IGN).nonzero(as_tuple=True)[0][:-1]
        if actual.numel() == 0:
            out.append((torch.tensor([]), torch.zeros(0, logits.shape[-1]), torch.tensor([])))
            continue
        s, e = actual[0].item(), actual[-1].item()
        out.append((target[i, s - 1 : e], log_probs[i, s - 1 : e], labels[i][actual]))
    return out


def _ou_min_k_plus_plus(torch, token_lp, vocab_lp, k):
    """OU mia/min_k_plus_plus.py::compute_score."""
    if len(token_lp) == 0:
        return 0
    mu = (torch.exp(vocab_lp) * vocab_lp).sum(-1)
    sigma = (torch.exp(vocab_lp) * torch.square(vocab_lp)).sum(-1) - torch.square(mu)
    sigma = torch.clamp(sigma, min=1e-6)
    scores = (token_lp.float().numpy() - mu.float().numpy()) / torch.sqrt(sigma).numpy()
    num_k = max(1, int(len(scores) * k))
    return -np.mean(sorted(scores)[:num_k])


def _ou_es_em(torch, vocab_lp, labels):
    """OU memorization.py: EM and ES (with the loop quirk)."""
    valid_len = len(labels)
    if valid_len == 0:
        return None, 0
    preds = torch.argmax(vocab_lp, dim=-1)
    em = ((preds == labels).sum() / valid_len).item()
    for k in range(valid_len):
        if torch.equal(preds[k:], labels[k:]):
            break
    return em, 1 - (k / valid_len)


# ------------------------------------------------------------------ token statistics


def test_probability_by_hand():
    # V=2; one labelled target per item plus EOS: logits [0, ln 3] -> p(1) = 3/4, p(0) = 1/4.
    lg = np.array([0.0, math.log(3.0)], np.float32)
    logits = np.tile(lg, (1, 4, 1))
    labels = np.array([[IGN, IGN, 1, 0]])
    st = M.token_stats(jnp.asarray(logits), jnp.asarray(labels))
    expected = -(math.log(0.75) + math.log(0.25)) / 2
    assert float(st["avg_loss_B"][0]) == pytest.approx(expected, rel=1e-6)
    assert int(st["n_tokens_B"][0]) == 2
    res = M.probability_result(M.avg_losses(st))
    assert res["value_by_index"]["0"]["prob"] == pytest.approx(math.sqrt(0.75 * 0.25), rel=1e-6)
    assert res["agg_value"] == pytest.approx(math.sqrt(0.75 * 0.25), rel=1e-6)
    # Uniform logits: prob = 1/V whatever the labels.
    st = M.token_stats(jnp.zeros((2, 5, 7)), jnp.array([[IGN, IGN, 3, 4, 5], [IGN, 1, 2, IGN, IGN]]))
    np.testing.assert_allclose(np.exp(-np.asarray(st["avg_loss_B"])), [1 / 7, 1 / 7], rtol=1e-6)


def test_token_stats_matches_torch_port_of_ou():
    torch = pytest.importorskip("torch")
    logits, labels = _rand_batch()
    st = M.token_stats(jnp.asarray(logits), jnp.asarray(labels))
    jax.jit(M.token_stats).lower(jnp.asarray(logits), jnp.asarray(labels))  # jittable as a whole
    avg, prob = _ou_evaluate_probability(torch, torch.tensor(logits), torch.tensor(labels))
    np.testing.assert_allclose(np.asarray(st["avg_loss_B"]), avg, rtol=1e-5)
    np.testing.assert_allclose(np.exp(-np.asarray(st["avg_loss_B"])), prob, rtol=1e-5)
    ou = _ou_tokenwise(torch, torch.tensor(logits), torch.tensor(labels))
    lps, mus, s2s = (M.item_tokens(st, k) for k in ("token_logp_BS", "mu_BS", "sigma2_BS"))
    for b, (tlp, vlp, lab) in enumerate(ou):
        np.testing.assert_allclose(lps[b], tlp.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mus[b], (torch.exp(vlp) * vlp).sum(-1).numpy(), rtol=1e-5, atol=1e-6)
        assert int(st["n_mia_B"][b]) == len(lab)
        em, es = _ou_es_em(torch, vlp, lab)
        assert M.exact_memorization_scores(st)[b] == pytest.approx(em)
        assert M.extraction_strength_scores(st)[b] == pytest.approx(es)
        for k in (0.2, 0.4, 1.0):
            ours = M.min_k_plus_plus_score(lps[b], mus[b], s2s[b], k)
            assert ours == pytest.approx(float(_ou_min_k_plus_plus(torch, tlp, vlp, k)), rel=1e-5, abs=1e-6)
    assert np.asarray(st["contiguous_B"]).all()


def test_masks_and_invalid_items():
    labels = jnp.array([[IGN, IGN, 5, 6, 7], [IGN, IGN, IGN, IGN, IGN], [IGN, 1, IGN, 2, IGN]])
    st = M.token_stats(jnp.zeros((3, 5, 9)), labels)
    np.testing.assert_array_equal(
        np.asarray(st["mia_mask_BS"]), [[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    )  # last labelled position dropped
    np.testing.assert_array_equal(np.asarray(st["valid_B"]), [True, False, True])
    np.testing.assert_array_equal(np.asarray(st["contiguous_B"]), [True, True, False])
    assert np.isnan(float(st["avg_loss_B"][1]))
    res = M.probability_result(M.avg_losses(st))
    assert res["value_by_index"]["1"] == {"prob": None, "avg_loss": None}
    assert res["agg_value"] == pytest.approx(1 / 9, rel=1e-6)  # the invalid item is skipped
    assert M.exact_memorization_scores(st)[1] is None
    assert M.extraction_strength_scores(st)[1] == 0.0  # OU: ES 0 (not None) for no targets
    assert M.min_k_scores(st)[1] == 0.0 and M.min_k_plus_plus_scores(st)[1] == 0.0


def test_token_stats_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B,T,V\]"):
        M.token_stats(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="disagree"):
        M.token_stats(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32))


# ------------------------------------------------------------------ probability, truth ratio


def test_probability_multi_answer_layout():
    res = M.probability_result([[0.0, math.log(2)], [math.log(4), math.log(4)]], indices=[10, 11])
    assert list(res["value_by_index"]) == ["10", "11"]
    assert res["value_by_index"]["10"]["prob"] == pytest.approx([1.0, 0.5])
    assert res["agg_value"] == pytest.approx((0.75 + 0.25) / 2)


def test_probability_w_options_by_hand():
    correct = M.probability_result([math.log(2), math.log(4)])["value_by_index"]  # p = .5, .25
    wrong = M.probability_result([[math.log(4), math.log(4)], [math.log(2), math.log(8)]])["value_by_index"]
    res = M.probability_w_options_result(correct, wrong)
    v0, v1 = 0.5 / (0.5 + 0.5 + 1e-10), 0.25 / (0.25 + 0.625 + 1e-10)
    assert res["value_by_index"]["0"]["prob"] == pytest.approx(v0)
    assert res["agg_value"] == pytest.approx((v0 + v1) / 2)


def test_truth_ratio_geometric_mean_and_aggregators():
    correct = M.probability_result([math.log(2), math.log(2)])["value_by_index"]  # P_true = 1/2
    # wrong probs 1/2 and 1/8 -> geometric mean 1/4 (arithmetic would be 5/16); 1/4 and 1 -> 1/2.
    wrong = M.probability_result([[math.log(2), math.log(8)], [math.log(4), 0.0]])["value_by_index"]
    tr = [0.25 / (0.5 + 1e-10), 0.5 / (0.5 + 1e-10)]
    res = M.truth_ratio_result(correct, wrong, "closer_to_1_better")
    assert M.scores_of(res) == pytest.approx(tr)
    assert res["agg_value"] == pytest.approx(np.mean([min(t, 1 / (t + 1e-10)) for t in tr]))
    assert M.truth_ratio_result(correct, wrong, "true_better")["agg_value"] == pytest.approx(
        np.mean([max(0, 1 - t) for t in tr])
    )
    pm = M.truth_ratio_result(correct, wrong, "prob_mean")
    assert pm["agg_value"] == pytest.approx(np.mean([0.5 / (0.75 + 1e-10), 0.5 / (1.0 + 1e-10)]))
    assert M.closer_to_1_better([4.0]) == pytest.approx(0.25)
    assert M.true_better([1.5, 0.25]) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="aggregator"):
        M.truth_ratio_result(correct, wrong, "mean")
    bad = dict(correct)
    bad["1"] = {"prob": None, "avg_loss": None}
    out = M.truth_ratio_result(bad, wrong, "true_better")
    assert out["value_by_index"]["1"] == {"score": None}  # stays on its own index
    assert M.scores_of(out)[0] == pytest.approx(tr[0])


# ------------------------------------------------------------------ forget quality, model utility


def test_ks_matches_scipy_and_separation_floor():
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(size=40), rng.lognormal(0.3, size=40)
    assert M.ks_pvalue(a, b) == scipy.stats.ks_2samp(a, b).pvalue
    for n, floor in ((40, 1.86e-23), (200, 1.94e-119)):
        sep = M.forget_quality_result(list(np.arange(n) * 1e-3), list(1 + np.arange(n)))
        assert sep["agg_value"] == pytest.approx(2 / math.comb(2 * n, n), rel=1e-9)
        assert sep["agg_value"] == pytest.approx(floor, rel=2e-3)
    assert M.forget_quality_result([0.1, 0.2], None) == {"agg_value": None}


def test_harmonic_mean_and_model_utility():
    vals = dict(zip(M.MODEL_UTILITY_KEYS, np.linspace(0.2, 0.9, 9), strict=True))
    mu = M.model_utility_result(vals)["agg_value"]
    assert mu == pytest.approx(scipy.stats.hmean(list(vals.values())))
    assert M.model_utility_result({**vals, "wf_Truth_Ratio": 0.0})["agg_value"] == 0.0
    assert M.harmonic_mean([0.5, 0.0]) == 0.0
    assert M.model_utility_result({**vals, "ra_Q_A_ROUGE": None})["agg_value"] is None
    with pytest.raises(ValueError, match="missing.*retain_Q_A_Prob"):
        M.model_utility_result({k: v for k, v in vals.items() if k != "retain_Q_A_Prob"})
    with pytest.raises(ValueError, match="non-negative"):
        M.harmonic_mean([0.5, -0.1])


# ------------------------------------------------------------------ ROUGE


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    gts = ["The author was born in Paris in 1950.", "She writes novels about running dogs."]
    gens = ["The author was born in Lyon.", "she wrote a novel about a dog who runs"]
    res = M.rouge_result(gts, gens, ["q1", "q2"], "rougeL_recall")
    for i, (gt, gen) in enumerate(zip(gts, gens, strict=True)):
        ref = scorer.score(gt, gen)
        item = res["value_by_index"][str(i)]
        assert item["rougeL_recall"] == ref["rougeL"].recall
        assert item["rougeL_f1"] == ref["rougeL"].fmeasure
        assert item["rouge1_recall"] == ref["rouge1"].recall
        assert (item["input"], item["ground_truth"], item["generation"]) == (f"q{i + 1}", gt, gen)
    assert res["agg_value"] == pytest.approx(
        np.mean([scorer.score(g, p)["rougeL"].recall for g, p in zip(gts, gens, strict=True)])
    )
    f1 = M.rouge_result(gts, gens, ["q1", "q2"], "rougeL_f1")["agg_value"]
    assert f1 == pytest.approx(
        np.mean([scorer.score(g, p)["rougeL"].fmeasure for g, p in zip(gts, gens, strict=True)])
    )


def test_rouge_text_cleaning():
    assert (
        M.rouge_ground_truth("Question: who?\nAnswer: Ilsa Dunmore ", "Question: who?\nAnswer:")
        == "Ilsa Dunmore"
    )
    assert (
        M.clean_generation(" Eels\n\nQuestion: next", ["\n\n", "\nQuestion", "Question:"], "</s>") == "Eels"
    )
    assert M.clean_generation("Paris</s> trailing", (), "</s>") == "Paris"
    assert M.clean_generation("  kept as is  ") == "kept as is"


# ------------------------------------------------------------------ AUC, MIA


def _pairwise_auc(neg, pos):
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for n, p in itertools.product(neg, pos))
    return total / (len(neg) * len(pos))


def test_auc_against_pairwise_definition_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(5):
        neg, pos = rng.integers(0, 6, size=9).astype(float), rng.integers(1, 7, size=7).astype(float)
        auc = M.roc_auc([0] * 9 + [1] * 7, np.concatenate([neg, pos]))
        assert auc == pytest.approx(_pairwise_auc(neg, pos), abs=1e-12)
    assert M.roc_auc([0, 0, 1, 1], [1, 1, 1, 1]) == 0.5
    assert M.roc_auc([0, 1], [0.0, 1.0]) == 1.0 and M.roc_auc([0, 1], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="one class"):
        M.roc_auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([0, 1], [0.1, float("nan")])


def test_auc_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = np.array([0] * 30 + [1] * 25)
    s = np.round(rng.normal(size=55), 1)  # many ties
    assert M.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_min_k_on_constructed_logits():
    # Target log-probs at the 5 MIA positions are set by hand: logits [lp_t, -inf-ish] style via V=2.
    p_S = np.array([0.9, 0.2, 0.6, 0.1, 0.7, 0.5], np.float32)  # last one is the dropped EOS position
    logits = np.zeros((1, 8, 2), np.float32)
    logits[0, 1:7, 1] = np.log(p_S / (1 - p_S))  # p(label=1) = p_S at positions predicting labels 2..7
    labels = np.array([[IGN, IGN, 1, 1, 1, 1, 1, 1]])
    st = M.token_stats(jnp.asarray(logits), jnp.asarray(labels))
    lp = np.log(p_S[:5])
    np.testing.assert_allclose(M.item_tokens(st, "token_logp_BS")[0], lp, rtol=1e-5)
    # n = 5, k = 0.4 -> num_k = 2: the two smallest log-probs (0.1 and 0.2).
    assert M.min_k_scores(st)[0] == pytest.approx(-(math.log(0.1) + math.log(0.2)) / 2, rel=1e-5)
    assert M.min_k_score(lp, 0.1) == pytest.approx(-math.log(0.1), rel=1e-6)  # max(1, int(0.5)) = 1
    assert M.min_k_score(np.array([])) == 0.0
    # Min-K++ by hand for V=2: mu = sum p log p, sigma2 = sum p log^2 p - mu^2.
    q = p_S[:5].astype(np.float64)
    mu = q * np.log(q) + (1 - q) * np.log(1 - q)
    s2 = q * np.log(q) ** 2 + (1 - q) * np.log(1 - q) ** 2 - mu**2
    z = np.sort((np.log(q) - mu) / np.sqrt(s2))
    assert M.min_k_plus_plus_scores(st)[0] == pytest.approx(-np.mean(z[:2]), rel=1e-4)
    # EM / ES: argmax is label 1 where p > 0.5 -> correct = [1, 0, 1, 0, 1].
    assert M.exact_memorization_scores(st)[0] == pytest.approx(0.6)
    assert M.extraction_strength_scores(st)[0] == pytest.approx(1 - 4 / 5)


def test_min_k_plus_plus_variance_clamp():
    # A one-hot-like distribution has sigma2 ~ 0: the clamp at 1e-6 keeps z finite.
    score = M.min_k_plus_plus_score(np.array([-1e-9]), np.array([-1e-9]), np.array([0.0]))
    assert score == 0.0
    score = M.min_k_plus_plus_score(np.array([-1.0]), np.array([0.0]), np.array([1e-12]))
    assert score == pytest.approx(1.0 / math.sqrt(1e-6), rel=1e-5)


def test_loss_zlib_reference_scores():
    text = "Ilsa Dunmore is the mayor of Velmora."
    assert M.zlib_score(2.0, text) == 2.0 / len(zlib.compress(text.encode("utf-8")))
    assert M.zlib_score(None, text) is None
    assert M.reference_score(1.5, 0.25) == 1.25
    assert M.reference_score(None, 0.25) is None


def test_mia_result_layout_and_direction():
    # Forget (members) have lower loss-like scores -> AUC 1 in OU's convention.
    res = M.mia_result([0.1, 0.2, None], [0.5, 0.7], holdout_indices=[7, 8])
    assert res["auc"] == 1.0 and res["agg_value"] == 1.0
    assert res["forget"]["value_by_index"]["2"] == {"score": None}
    assert res["forget"]["agg_value"] == pytest.approx(0.15)
    assert list(res["holdout"]["value_by_index"]) == ["7", "8"]


def test_extraction_strength_quirk():
    assert M.extraction_strength_score([0, 0, 0, 0]) == pytest.approx(1 / 4)  # floor 1/L, not 0
    assert M.extraction_strength_score([0, 0, 0, 1]) == pytest.approx(1 / 4)
    assert M.extraction_strength_score([1, 1, 1, 1]) == 1.0
    assert M.extraction_strength_score([1, 0, 1, 1]) == pytest.approx(1 - 2 / 4)
    assert M.extraction_strength_score([0]) == 1.0  # L = 1: the loop never moves past k = 0
    assert M.extraction_strength_score([]) == 0.0
    assert M.exact_memorization_score([1, 0, 1, 1]) == 0.75 and M.exact_memorization_score([]) is None


def test_gradnorm_helpers():
    grads = {"a": jnp.array([[3.0, 4.0]]), "b": {"c": jnp.array([0.0, 0.0, 2.0])}}
    assert float(M.grad_norm_mean(grads)) == pytest.approx((5.0 + 2.0) / 2)
    assert float(M.grad_norm_mean(grads, p=1)) == pytest.approx((7.0 + 2.0) / 2)
    assert float(M.grad_norm_mean(grads, p=math.inf)) == pytest.approx((4.0 + 2.0) / 2)
    with pytest.raises(ValueError, match="p-norm"):
        M.grad_norm_mean(grads, p=3)
    logits, labels = _rand_batch(seed=4)
    st = M.token_stats(jnp.asarray(logits), jnp.asarray(labels))
    nll = M.mia_token_nll(jnp.asarray(logits), jnp.asarray(labels))
    expected = [-np.mean(lp) for lp in M.item_tokens(st, "token_logp_BS")]
    np.testing.assert_allclose(np.asarray(nll), expected, rtol=1e-5)
    g = jax.grad(lambda x: M.mia_token_nll(x, jnp.asarray(labels))[0])(jnp.asarray(logits))
    assert np.isfinite(np.asarray(g)).all() and float(M.grad_norm_mean({"x": g})) > 0


def test_privleak_formula_and_sign():
    # Model AUC 0.8 (forget looks like members), retain AUC 0.5: score 0.2, ref 0.5 -> -60 (leak < 0).
    assert M.privleak_result(0.8, 0.5)["agg_value"] == pytest.approx((0.2 - 0.5) / (0.5 + 1e-10) * 100)
    assert M.privleak_result(0.3, 0.5)["agg_value"] > 0  # under-unlearning flips the sign
    assert M.privleak_result(0.47, 0.47)["agg_value"] == pytest.approx(0.0)
    none = M.privleak_result(0.8, None)
    assert none["agg_value"] is None and "note" in none
    assert M.privleak_result(0.8, None, compat=True)["agg_value"] == pytest.approx(-60.0)
    assert M.rel_diff_result(0.6, 0.5)["agg_value"] == pytest.approx(20.0)


# ------------------------------------------------------------------ report


def test_write_eval_and_summary(tmp_path):
    logs = {
        "forget_quality": {"agg_value": np.float64(1.86e-23)},
        "privleak": {"agg_value": None, "note": "x"},
        "forget_Q_A_Prob": M.probability_result([0.5, None]),
    }
    eval_path, summary_path = R.write_eval(tmp_path, logs, name="TOFU")
    assert os.path.basename(eval_path) == "TOFU_EVAL.json"
    saved = json.loads(Path(eval_path).read_text())
    assert list(saved) == sorted(logs) and saved["forget_Q_A_Prob"]["value_by_index"]["1"]["prob"] is None
    summary = json.loads(Path(summary_path).read_text())
    assert summary == {"forget_Q_A_Prob": pytest.approx(math.exp(-0.5)), "forget_quality": 1.86e-23}
    table = R.render_table(summary, title="TOFU")
    assert "forget_quality" in table and "1.860e-23" in table and "0.6065" in table


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out" / "TOFU_EVAL.json"
    R.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError, match="serialise"):
        R.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["TOFU_EVAL.json"]

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        R.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["TOFU_EVAL.json"]


def test_load_retain_logs(tmp_path):
    good = {
        "forget_truth_ratio": {
            "agg_value": 0.6,
            "value_by_index": {"0": {"score": 0.5}, "1": {"score": 0.9}},
        },
        "mia_min_k": {"agg_value": 0.45, "forget": {}, "holdout": {}, "auc": 0.45},
    }
    p = tmp_path / "TOFU_EVAL.json"
    p.write_text(json.dumps(good))
    logs = R.load_retain_logs(p, require=("forget_truth_ratio", "mia_min_k"))
    assert R.retain_truth_ratios(logs) == [0.5, 0.9]
    assert R.retain_mia_auc(logs) == 0.45 and R.retain_mia_auc(None) is None
    p.write_text(json.dumps({"mia_min_k": good["mia_min_k"]}))
    with pytest.raises(ValueError, match="forget_truth_ratio"):
        R.load_retain_logs(p)
    p.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {"0": {"prob": 1}}}}))
    with pytest.raises(ValueError, match=r"value_by_index\['0'\] lacks 'score'"):
        R.load_retain_logs(p)
    p.write_text(json.dumps({"mia_min_k": {"auc": 0.4}}))
    with pytest.raises(ValueError, match="mia_min_k.*agg_value"):
        R.load_retain_logs(p, require=("mia_min_k",))
    with pytest.raises(ValueError, match="do not exist"):
        R.load_retain_logs(tmp_path / "missing.json")
    # End to end: forget quality from the retain logs.
    fq = M.forget_quality_result([0.5, 0.9], R.retain_truth_ratios(logs))["agg_value"]
    assert fq == pytest.approx(1.0)


# ------------------------------------------------------------------ MUSE fixtures


@pytest.mark.parametrize(
    "config, splits, fields",
    [
        ("raw", ("forget", "retain1"), {"text"}),
        ("verbmem", ("forget",), {"prompt", "gt"}),
        ("knowmem", ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl"), {"question", "answer"}),
        ("privleak", ("forget", "holdout"), {"text"}),
    ],
)
def test_muse_fixture_layout(config, splits, fields):
    for split in splits:
        rows = [
            json.loads(line) for line in (MUSE_FIXTURES / config / f"{split}.jsonl").read_text().splitlines()
        ]
        assert 4 <= len(rows) <= 8
        for row in rows:
            assert set(row) == fields and all(isinstance(v, str) and v.strip() for v in row.values())
