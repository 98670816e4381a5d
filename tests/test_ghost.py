"""Ghost norms (evaluation/ghost.py) == the norms of each row's own full gradient, tensor by tensor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cel_jax.evaluation import forward as F
from cel_jax.evaluation import ghost, gradnorm
from cel_jax.evaluation import metrics as M
from cel_jax.model import Llama, LlamaConfig, taps
from cel_jax.unlearning.losses import IGNORE

CONFIGS = {
    "tied": dict(),
    "untied+biases": dict(tie_word_embeddings=False, attention_bias=True, o_bias=True, mlp_bias=True),
    "long-T": dict(d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=24),  # dense norms use G itself
}


def _rows(rng, B, T, V, start=10):
    ids = rng.integers(3, V, (B, T)).astype(np.int32)
    ids[:, 5:9] = ids[:, 1:5]  # repeated ids: the embedding's gathered rows add up
    labels = np.full((B, T), IGNORE, np.int32)
    mask = np.zeros((B, T), np.int32)
    for b in range(B):
        n = T - 3 * b
        mask[b, :n] = 1
        labels[b, start:n] = ids[b, start:n]
    return ids, mask, labels


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("rows", ["all", "answers"])
def test_ghost_norms_equal_per_row_gradient_norms(name, rows):
    cfg = LlamaConfig.tiny(**CONFIGS[name])
    model = Llama(cfg, rngs=nnx.Rngs(3))
    start = 10 if rows == "all" else 28
    ids, mask, labels = map(jnp.asarray, _rows(np.random.default_rng(0), 3, 48, cfg.vocab_size, start))
    cap = None if rows == "all" else F.answer_cap(np.asarray(labels), 48)
    assert (cap is None) == (rows == "all")  # "answers": the LM head runs on the answer rows only
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def row_loss(p, b):
        m = nnx.merge(graphdef, p, rest)
        return M.mia_token_nll(*F._answer_logits(m, ids[b : b + 1], mask[b : b + 1], labels[b : b + 1], cap))[
            0
        ]

    sq = np.asarray(
        jax.jit(
            lambda: ghost.tensor_sq_norms(
                lambda: M.mia_token_nll(*F._answer_logits(model, ids, mask, labels, cap)),
                cfg.tie_word_embeddings,
            )
        )()
    )
    n_tensors = len(jax.tree.leaves(params))
    assert sq.shape == (n_tensors, 3)
    for b in range(3):
        g = jax.grad(row_loss)(params, b)
        want = np.sort([float(jnp.sum(x.astype(jnp.float32) ** 2)) for x in jax.tree.leaves(g)])
        np.testing.assert_allclose(np.sort(sq[:, b]), want, rtol=2e-4, atol=1e-9)
        assert want[-1] > 0


def test_gradnorm_scores_ghost_equal_batch_one():
    cfg = LlamaConfig.tiny()
    model = Llama(cfg, rngs=nnx.Rngs(1))
    ids, mask, labels = _rows(np.random.default_rng(1), 5, 40, cfg.vocab_size)
    items = [
        {"input_ids": ids[b, : mask[b].sum()].tolist(), "labels": labels[b, : mask[b].sum()].tolist()}
        for b in range(5)
    ]
    items.append({"input_ids": [5, 6, 7], "labels": [IGNORE, IGNORE, 7]})  # < 2 labels: no score
    plain = gradnorm.gradnorm_scores(model, items, 0, multiple=8, ghost=0, progress=False)
    ghosted = gradnorm.gradnorm_scores(
        model, items, 0, multiple=8, ghost=2, progress=False
    )  # fillers in a batch
    assert plain[-1] is None and ghosted[-1] is None
    np.testing.assert_allclose(ghosted[:-1], plain[:-1], rtol=1e-4)
    assert len(set(np.round(plain[:-1], 6))) == 5
    remat = Llama(cfg.replace(remat="full"), rngs=nnx.Rngs(1))  # same weights; taps can't see inside remat
    np.testing.assert_allclose(
        gradnorm.gradnorm_scores(remat, items[:-1], 0, multiple=8, ghost=2, progress=False),
        plain[:-1],
        rtol=1e-5,
    )


def test_taps_are_found_in_the_traced_program_not_in_model_state():
    """The plain forward carries only named identities; `taps.trace` finds every parameter use, in call order,
    and re-running with zero perturbations gives the forward's output. Taps in a nested program fail."""
    cfg = LlamaConfig.tiny(tie_word_embeddings=False)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 7)))
    probe = taps.trace(lambda: model(ids))
    per_layer = ["scale", "dense", "dense", "dense", "dense", "scale", "dense", "dense", "dense"]
    assert list(probe.kinds) == ["embed", *per_layer * cfg.n_layers, "scale", "head"]
    out, inputs = probe.run([jnp.zeros(s.shape, s.dtype) for s in probe.shapes])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(model(ids)))
    assert len(inputs) == len(probe.kinds) and inputs[0].shape == ids.shape
    with pytest.raises(ValueError, match="nested"):
        taps.trace(jax.checkpoint(lambda: model(ids)))
