"""LM head on answer rows only: the same (logit row, target) pairs, the same step, the right gates."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from cel_jax import config_base
from cel_jax.model import Llama, LlamaConfig
from cel_jax.training import engine
from cel_jax.unlearning import answer_rows, methods
from cel_jax.unlearning import step as step_lib
from cel_jax.unlearning.losses import IGNORE

V = 96


def _labels(rng, B, T, max_answer=None):
    """Prompt (ignored), answer, then padding (ignored); some rows with no answer at all."""
    ids = rng.integers(3, V, (B, T)).astype(np.int32)
    labels = np.full((B, T), IGNORE, np.int32)
    mask = np.zeros((B, T), np.int32)
    for b in range(B):
        n = int(rng.integers(T // 2, T + 1))
        mask[b, :n] = 1
        p = int(rng.integers(1, n))
        hi = n if max_answer is None else min(n, p + max_answer)
        if b != 1:  # row 1: no target tokens
            labels[b, p:hi] = ids[b, p:hi]
    return ids, mask, labels


def _pairs(labels_BT):
    """{b: [(row t, target)]} for the rows that predict a target: labels[t+1] != IGNORE."""
    return {b: [(t, int(y)) for t, y in enumerate(row[1:]) if y != IGNORE] for b, row in enumerate(labels_BT)}


def test_compact_keeps_every_pair_in_order():
    rng = np.random.default_rng(0)
    _, _, labels = _labels(rng, 6, 40)
    C = answer_rows.capacity(labels)
    assert C % answer_rows.MULTIPLE == 0 and C >= max(answer_rows.answer_count(x) for x in labels) + 1
    rows, lab = map(np.asarray, answer_rows.compact(jnp.asarray(labels), C))
    assert rows.shape == lab.shape == (6, C)
    full, comp = _pairs(labels), _pairs(lab)
    for b in range(6):
        # compact pair j is (gathered row rows[b, j], target lab[b, j+1]); map it back to the full row
        assert [(int(rows[b, j]), y) for j, y in comp[b]] == full[b]
    with pytest.raises(ValueError, match="capacity 8 .* too small"):
        answer_rows.check_capacity(labels, 8, "forget")


def _tiny():
    cfg = LlamaConfig.tiny(vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Llama(cfg, rngs=nnx.Rngs(0))


def _batch(rng, parts, M=2, B=3, T=48):
    out = {}
    for p in parts:
        cols = [_labels(rng, B, T, max_answer=14) for _ in range(M)]
        out[p] = {
            "input_ids": jnp.asarray(np.stack([c[0] for c in cols])),
            "attention_mask": jnp.asarray(np.stack([c[1] for c in cols])),
            "labels": jnp.asarray(np.stack([c[2] for c in cols])),
        }
    return out


CASES = [
    ("pdu", "primal_dual", {}),
    ("pdu_entropy", "primal_dual", {}),
    ("grad_ascent", "scalarized", {}),
    ("grad_diff", "scalarized", {}),
    ("grad_diff", "scalarized", {"retain_loss": "kl"}),
    ("npo", "scalarized", {}),
    ("simnpo", "scalarized", {}),
    ("idk_dpo", "scalarized", {}),
    ("undial", "scalarized", {}),
    ("ceu", "scalarized", {}),
    ("wga", "scalarized", {}),
    ("satimp", "scalarized", {}),
    ("finetune", "finetune", {}),
]


def _run_cfg(method, solver, over):
    """The run config of one case: the authors' gda dual (λ0 2, η 5, per step); weights γ = 1 and α = 1
    where the method's α is 0, so that every loss term enters the gradients compared."""
    c = config_base.unlearn_config()
    c.method, c.solver = method, solver
    c.dual = config_base.authors_dual(lam0=2.0, lr=5.0, mode="step")
    hp = methods.resolve_hparams(method, over)
    c.method_args = ml_collections.ConfigDict({**over, "gamma": 1.0, "alpha": float(hp["alpha"]) or 1.0})
    return c


@pytest.mark.parametrize("method,solver,over", CASES, ids=[f"{m}-{o}" if o else m for m, _, o in CASES])
def test_step_on_answer_rows_equals_full_step(method, solver, over):
    model = _tiny()
    graphdef, params = engine.split(model)
    mode = "finetune" if solver == "finetune" else "unlearn"
    cfg = config_base.finetune_config() if mode == "finetune" else _run_cfg(method, solver, over)
    rng = np.random.default_rng(1)
    batch = _batch(rng, ("forget", "retain", "idk") if method == "idk_dpo" else ("forget", "retain"))
    labels = {p: np.asarray(part["labels"]).reshape(-1, 48) for p, part in batch.items()}
    tx = optax.sgd(1.0)  # new params = params - grads: compares the gradients themselves
    outs, engines = [], []
    for rows in ("all", "answers"):  # the engine's answer-row plan: none, then the method's parts
        cfg.lm_head_rows = rows
        eng = engine.build(cfg, model.cfg, graphdef, params, mode, labels=labels, steps=(10, 0), tx=tx)
        st = eng.make_state(jax.tree.map(jnp.copy, params), 0.5)
        outs.append(eng.step(st, batch, eng.hp(True), eng.reference(params), eng.consts))
        engines.append(eng)
    assert engines[0].spec.answer_rows == ()
    caps = dict(engines[1].spec.answer_rows)
    assert "forget" in caps and set(caps) == set(engines[1].spec.resolved.answer_row_parts) & set(batch)
    assert all(c < 47 for c in caps.values())  # the compaction really happens
    (s_full, m_full), (s_rows, m_rows) = outs
    for k in ("loss", "forget_loss", "grad_norm", "dual_next"):
        a, b = float(m_full[k]), float(m_rows[k])
        if np.isnan(a):
            assert np.isnan(b), k
        else:
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-6, err_msg=k)
    assert float(m_full["grad_norm"]) > 0
    jax.tree.map(
        lambda p, a, b: np.testing.assert_allclose(p - b, p - a, rtol=1e-4, atol=1e-6),
        params,
        s_full.params,
        s_rows.params,
    )


def test_gates_keep_full_logits_where_a_loss_reads_other_rows():
    def parts(name, over=None, retain="default", compat=False):  # what the resolved record declares
        over = dict(over or {}) | ({} if retain == "default" else {"retain_loss": retain})
        return set(methods.resolve_method(name, over, compat=compat).answer_row_parts)

    assert parts("pdu", {"shifted": True, "average": "token"}, "nll") == {"forget", "retain"}
    assert parts("pdu", {"shifted": True, "average": "token"}, "nll", compat=True) == set()  # unshifted
    assert parts("pdu", {"shifted": False, "average": "token"}, "nll") == {"retain"}
    assert parts("pdu", {"shifted": True, "average": "all"}, "nll") == {"retain"}
    assert parts("pdu_entropy", {"shifted": False}) == {"retain"}
    assert parts("rmu", {}, "embed_diff") == set()  # hidden states, not logits
    assert parts("rmu", {}, "nll") == {"retain"}
    assert parts("idk_dpo", {"beta": 0.1}, "nll") == {"forget", "idk", "retain"}
    assert parts("grad_ascent", retain=None) == {"forget"}
    cfg = ml_collections.ConfigDict({"lm_head_rows": "all"})  # the config switch turns every part off
    spec = step_lib.StepSpec(methods.resolve_method("pdu"))
    assert engine.answer_row_parts(cfg, spec) == set()
    assert engine.answer_row_parts(ml_collections.ConfigDict({"lm_head_rows": "answers"}), spec) == {
        "forget",
        "retain",
    }


def test_eval_statistics_on_answer_rows_equal_full_rows():
    from cel_jax.evaluation import forward as F
    from cel_jax.evaluation import gradnorm
    from cel_jax.evaluation import metrics as M

    model = _tiny()
    rng = np.random.default_rng(3)
    ids, mask, labels = _labels(rng, 5, 64, max_answer=20)
    labels[:, 0] = IGNORE
    cap = F.answer_cap(labels, 64)
    assert cap is not None and cap < 63
    args = (model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels))
    full, rows = F._plain_stats(*args, full=True), F._plain_stats(*args, full=True, cap=cap)
    np.testing.assert_allclose(rows["avg_loss_B"], full["avg_loss_B"], rtol=1e-5)
    np.testing.assert_array_equal(rows["n_tokens_B"], full["n_tokens_B"])
    for key in ("token_logp_BS", "mu_BS", "sigma2_BS", "correct_BS"):
        for a, b in zip(M.item_tokens(full, key), M.item_tokens(rows, key), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=key)
    g1 = [args[0], *(jnp.asarray(x[2:3]) for x in (ids, mask, labels))]
    np.testing.assert_allclose(gradnorm._gradnorm(*g1, cap=cap), gradnorm._gradnorm(*g1), rtol=1e-5)
    labels[0, 0] = 5  # a target no row predicts: n_tokens counts it, so keep every row
    assert F.answer_cap(labels, 64) is None
