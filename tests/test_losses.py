"""cel_jax.unlearning.losses against NumPy closed forms, analytic gradients and finite differences.

(Torch ports of the reference code live in test_methods.py; torch is not imported here to keep this fast.)

Axes: B batch, T length, V vocabulary.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cel_jax.unlearning import losses
from cel_jax.unlearning.losses import IGNORE


@functools.cache
def _jit(name, static, grad):
    fn = functools.partial(getattr(losses, name), **dict(static))
    # No LLVM optimisation: these tests compile many tiny programs (halves compile time).
    return jax.jit(
        jax.value_and_grad(fn) if grad else fn, compiler_options={"xla_backend_optimization_level": 0}
    )


class _Jitted:
    """`L.fn(*arrays, **static)` runs `losses.fn` under a cached jax.jit (eager JAX compiles each primitive);
    `L.grad("fn", *arrays, **static)` returns (value, d/d first argument)."""

    def __getattr__(self, name):
        return lambda *args, **kw: _jit(name, tuple(sorted(kw.items())), False)(*args)

    def grad(self, name, *args, **kw):
        return _jit(name, tuple(sorted(kw.items())), True)(*args)


L = _Jitted()

B, T, V = 3, 7, 11


def make_batch(seed=0, b=B, t=T, v=V, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(b, t, v)) * scale).astype(np.float32)
    labels = rng.integers(0, v, size=(b, t)).astype(np.int32)
    labels[0, :3] = IGNORE  # prompt 3, answer 4 (incl. EOS)
    labels[1, :2] = IGNORE  # prompt 2, answer 3, right padding 2
    labels[1, 5:] = IGNORE
    labels[2, :5] = IGNORE  # prompt 5, answer 2
    return logits, labels


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_shifted_rows(labels):
    """(b, t, target) for every position t whose next label is a target (paper's rows)."""
    return [
        (b, t, labels[b, t + 1])
        for b in range(labels.shape[0])
        for t in range(labels.shape[1] - 1)
        if labels[b, t + 1] != IGNORE
    ]


def np_unshifted_rows(labels):
    return [
        (b, t, labels[b, t])
        for b in range(labels.shape[0])
        for t in range(labels.shape[1])
        if labels[b, t] != IGNORE
    ]


def np_margin_sq(row):
    row = np.asarray(row, np.float64)
    return (row.max() - row.mean()) ** 2


def np_average(rows, values, average, b):
    if average == "token":
        return np.mean(values) if values else 0.0
    per_seq = {}
    for (bb, _, _), v in zip(rows, values, strict=True):
        per_seq.setdefault(bb, []).append(v)
    means = [np.mean(per_seq[i]) for i in range(b) if i in per_seq]
    return np.mean(means) if means else 0.0


# ------------------------------------------------------------------------------------------- shift / CE


def test_shift_shapes_targets_and_mask():
    logits, labels = make_batch()
    z, targets, mask = losses.shift(jnp.asarray(logits, jnp.bfloat16), labels)
    assert z.shape == (B, T - 1, V) and z.dtype == jnp.float32
    np.testing.assert_array_equal(mask, labels[:, 1:] != IGNORE)
    np.testing.assert_array_equal(targets, np.where(labels[:, 1:] != IGNORE, labels[:, 1:], 0))


def test_token_ce_mean_matches_numpy_hf_loss():
    logits, labels = make_batch()
    rows = np_shifted_rows(labels)
    expected = np.mean([-np_log_softmax(logits[b, t])[y] for b, t, y in rows])
    got = L.token_ce_mean(logits, labels)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # HF outputs.loss, vectorised: shift, then CrossEntropyLoss(ignore_index=-100, reduction="mean").
    lp = np_log_softmax(logits[:, :-1]).reshape(-1, V)
    y = labels[:, 1:].reshape(-1)
    keep = y != IGNORE
    np.testing.assert_allclose(got, -lp[keep, y[keep]].mean(), rtol=1e-6)


def test_sequence_nll_sums_and_counts():
    logits, labels = make_batch()
    nll, count = L.sequence_nll(logits, labels)
    for b in range(B):
        rows = [(t, y) for bb, t, y in np_shifted_rows(labels) if bb == b]
        np.testing.assert_allclose(nll[b], sum(-np_log_softmax(logits[b, t])[y] for t, y in rows), rtol=1e-6)
        assert int(count[b]) == len(rows)
    assert count.tolist() == [4, 3, 2]


# ------------------------------------------------------------------------------------------- logit margin


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("average", ["token", "sequence", "all"])
def test_logit_margin_matches_numpy(shifted, average):
    logits, labels = make_batch(seed=1)
    got = L.logit_margin(logits, labels, shifted=shifted, average=average)
    if average == "all":
        z = logits[:, :-1] if shifted else logits
        expected = np.mean([np_margin_sq(r) for r in z.reshape(-1, V)])
    else:
        rows = np_shifted_rows(labels) if shifted else np_unshifted_rows(labels)
        values = [np_margin_sq(logits[b, t]) for b, t, _ in rows]
        expected = np_average(rows, values, average, B)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_logit_margin_authors_code_formula():
    """Upstream PR147: ((max - mean)**2 * mask).sum() / mask.sum() on unshifted rows (B*T, V)."""
    logits, labels = make_batch(seed=2)
    z = logits.reshape(-1, V).astype(np.float64)
    mask = (labels != IGNORE).reshape(-1)
    ref = (((z.max(-1) - z.mean(-1)) ** 2) * mask).sum() / mask.sum()
    np.testing.assert_allclose(L.logit_margin(logits, labels, shifted=False, tie="first"), ref, rtol=1e-6)


def test_logit_margin_gradient_is_analytic():
    logits, labels = make_batch(seed=3)
    g = L.grad("logit_margin", jnp.asarray(logits), labels)[1]
    rows = np_shifted_rows(labels)
    expected = np.zeros_like(logits, dtype=np.float64)
    for b, t, _ in rows:
        z = logits[b, t].astype(np.float64)
        onehot = np.eye(V)[z.argmax()]
        expected[b, t] = 2 * (z.max() - z.mean()) * (onehot - 1.0 / V) / len(rows)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g)[:, -1] == 0)  # last row predicts nothing when shifted


def test_logit_margin_gradient_matches_finite_differences():
    logits, labels = make_batch(seed=4)
    rows = np_shifted_rows(labels)

    def np_loss(z):
        return np.mean([np_margin_sq(z[b, t]) for b, t, _ in rows])

    g = np.asarray(L.grad("logit_margin", jnp.asarray(logits), labels)[1])
    z0 = logits.astype(np.float64)
    h = 1e-4
    fd = np.zeros_like(z0)
    for idx in np.ndindex(z0.shape):
        zp, zm = z0.copy(), z0.copy()
        zp[idx] += h
        zm[idx] -= h
        fd[idx] = (np_loss(zp) - np_loss(zm)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6)


def test_logit_margin_ties_split_vs_first():
    z = np.zeros((1, 2, 5), np.float32)
    z[0, 0] = [3.0, 3.0, 0.0, 1.0, -1.0]
    labels = np.array([[IGNORE, 7]], np.int32)  # one target; row 0 predicts it
    mu = z[0, 0].mean()
    scale = 2 * (3.0 - mu)
    g_split = np.asarray(L.grad("logit_margin", jnp.asarray(z), labels, tie="split")[1])[0, 0]
    g_first = np.asarray(L.grad("logit_margin", jnp.asarray(z), labels, tie="first")[1])[0, 0]
    np.testing.assert_allclose(g_split, scale * (np.array([0.5, 0.5, 0, 0, 0]) - 0.2), rtol=1e-6)
    np.testing.assert_allclose(g_first, scale * (np.array([1.0, 0, 0, 0, 0]) - 0.2), rtol=1e-6)
    np.testing.assert_allclose(
        L.logit_margin(z, labels, tie="split"), L.logit_margin(z, labels, tie="first"), rtol=0
    )


def test_logit_margin_zero_exactly_at_uniform_logits():
    _, labels = make_batch()
    c = np.random.default_rng(5).normal(size=(B, T, 1)).astype(np.float32) * 10
    z = jnp.asarray(np.broadcast_to(c, (B, T, V)))
    for average in ("token", "sequence", "all"):
        assert float(L.logit_margin(z, labels, average=average)) == 0.0
    g = L.grad("logit_margin", z, labels)[1]
    assert float(jnp.max(jnp.abs(g))) == 0.0


def test_shifted_and_unshifted_rows_differ_as_documented():
    labels = np.array([[IGNORE, IGNORE, IGNORE, 4, 5, 6, 2]], np.int32)  # answer 3 tokens + EOS at t=6
    flat = np.zeros((1, 7, V), np.float32)
    # Only row 2 (last prompt position, predicts the first answer token) is non-uniform.
    z = flat.copy()
    z[0, 2, 0] = 5.0
    assert float(L.logit_margin(z, labels, shifted=True)) > 0.0
    assert float(L.logit_margin(z, labels, shifted=False)) == 0.0
    # Only row 6 (the EOS row, predicts past the end) is non-uniform.
    z = flat.copy()
    z[0, 6, 0] = 5.0
    assert float(L.logit_margin(z, labels, shifted=True)) == 0.0
    assert float(L.logit_margin(z, labels, shifted=False)) > 0.0
    # Exact row sets: shifted rows 2..5 (4 rows), unshifted rows 3..6.
    for t in range(7):
        z = flat.copy()
        z[0, t, 0] = 5.0
        value = (5.0 * (1 - 1 / V)) ** 2
        np.testing.assert_allclose(L.logit_margin(z, labels, shifted=True), value / 4 * (2 <= t <= 5))
        np.testing.assert_allclose(L.logit_margin(z, labels, shifted=False), value / 4 * (3 <= t <= 6))


def test_token_vs_sequence_average():
    # Sequence 0: one target with row value a; sequence 1: three targets with row value b each.
    z = np.zeros((2, 4, V), np.float32)
    z[0, 2, 0] = 2.0
    z[1, :3, 0] = 6.0
    labels = np.array([[IGNORE, IGNORE, IGNORE, 1], [IGNORE, 1, 2, 3]], np.int32)
    a, b = (2.0 * (1 - 1 / V)) ** 2, (6.0 * (1 - 1 / V)) ** 2
    np.testing.assert_allclose(L.logit_margin(z, labels, average="token"), (a + 3 * b) / 4, rtol=1e-6)
    np.testing.assert_allclose(L.logit_margin(z, labels, average="sequence"), (a + b) / 2, rtol=1e-6)


def test_sequence_average_skips_sequences_without_targets():
    logits, labels = make_batch(seed=6)
    labels[2] = IGNORE
    rows = np_shifted_rows(labels)
    expected = np_average(rows, [np_margin_sq(logits[b, t]) for b, t, _ in rows], "sequence", B)
    np.testing.assert_allclose(L.logit_margin(logits, labels, average="sequence"), expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------- entropy / KL


def test_entropy_forget_value_and_gradient():
    logits, labels = make_batch(seed=7)
    rows = np_shifted_rows(labels)

    def h(row):
        lp = np_log_softmax(row)
        return -(np.exp(lp) * lp).sum()

    np.testing.assert_allclose(
        L.entropy_forget(logits, labels), -np.mean([h(logits[b, t]) for b, t, _ in rows]), rtol=1e-5
    )
    g = np.asarray(L.grad("entropy_forget", jnp.asarray(logits), labels)[1])
    b, t, _ = rows[0]
    lp = np_log_softmax(logits[b, t])
    dh = -np.exp(lp) * (lp + h(logits[b, t]))  # dH/dz_k = -p_k (log p_k + H)
    np.testing.assert_allclose(g[b, t], -dh / len(rows), rtol=1e-4, atol=1e-7)
    # Minimum -log V at uniform logits.
    np.testing.assert_allclose(L.entropy_forget(np.zeros_like(logits), labels), -np.log(V), rtol=1e-6)


def test_kl_compat_is_batchmean_over_all_positions():
    logits, _ = make_batch(seed=8)
    ref = make_batch(seed=9)[0]
    lp = np_log_softmax(logits).reshape(-1, V)
    lq = np_log_softmax(ref).reshape(-1, V)
    # torch kl_div(lp, lq, reduction="batchmean", log_target=True) = sum(exp(lq) * (lq - lp)) / (B*T)
    expected = (np.exp(lq) * (lq - lp)).sum() / (B * T)
    np.testing.assert_allclose(L.kl_to_reference(logits, ref), expected, rtol=1e-5)


def test_kl_masked_and_on_targets_match_numpy():
    logits, labels = make_batch(seed=10)
    ref = make_batch(seed=11)[0]
    lp, lq = np_log_softmax(logits), np_log_softmax(ref)
    kl = (np.exp(lq) * (lq - lp)).sum(-1)
    mask = labels != IGNORE
    np.testing.assert_allclose(L.kl_to_reference(logits, ref, mask), kl[mask].mean(), rtol=1e-5)
    mask_t = labels[:, 1:] != IGNORE
    np.testing.assert_allclose(L.kl_on_targets(logits, ref, labels), kl[:, :-1][mask_t].mean(), rtol=1e-5)
    assert float(L.kl_to_reference(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    g_ref = jax.jit(jax.grad(lambda r: losses.kl_on_targets(jnp.asarray(logits), r, labels)))(
        jnp.asarray(ref)
    )
    assert float(jnp.max(jnp.abs(g_ref))) == 0.0  # the reference side is stop-gradient


# ------------------------------------------------------------------------------------------- edge cases


def test_all_masked_gives_zero_and_finite_gradients():
    logits, _ = make_batch()
    z = jnp.asarray(logits)
    labels = np.full((B, T), IGNORE, np.int32)
    cases = [
        ("token_ce_mean", (labels,), {}),
        ("logit_margin", (labels,), {}),
        ("logit_margin", (labels,), {"average": "sequence"}),
        ("logit_margin", (labels,), {"shifted": False}),
        ("entropy_forget", (labels,), {}),
        ("kl_on_targets", (jnp.zeros_like(z), labels), {}),
    ]
    for name, rest, kw in cases:
        value, g = L.grad(name, z, *rest, **kw)
        assert float(value) == 0.0, (name, kw)
        assert bool(jnp.all(g == 0)), (name, kw)
    nll, count = L.sequence_nll(logits, labels)
    assert nll.tolist() == [0.0] * B and count.tolist() == [0] * B


def test_bf16_inputs_are_computed_in_fp32():
    logits, labels = make_batch(seed=12, v=257, scale=30.0)
    z16 = jnp.asarray(logits, jnp.bfloat16)
    z32 = np.asarray(z16.astype(jnp.float32), np.float64)  # the exact values the bf16 array holds
    rows = np_shifted_rows(labels)
    for fn, ref in [
        (L.logit_margin, np.mean([np_margin_sq(z32[b, t]) for b, t, _ in rows])),
        (L.token_ce_mean, np.mean([-np_log_softmax(z32[b, t])[y] for b, t, y in rows])),
    ]:
        out = fn(z16, labels)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, ref, rtol=2e-6)
    # A bf16 computation would be visibly off, so the test above can fail.
    bf16_margin = jax.jit(lambda z: jnp.square(jnp.max(z[:, :-1], -1) - jnp.mean(z[:, :-1], -1)))
    bf = jnp.mean(bf16_margin(z16).astype(jnp.float32)[labels[:, 1:] != IGNORE])
    assert abs(float(bf) - float(L.logit_margin(z16, labels))) > 1e-4 * float(bf)
    assert L.kl_to_reference(z16, z16).dtype == jnp.float32


def test_jit_compatible():
    logits, labels = make_batch()
    f = jax.jit(lambda z, y: losses.logit_margin(z, y, average="sequence"))
    np.testing.assert_allclose(
        f(logits, labels), L.logit_margin(logits, labels, average="sequence"), rtol=1e-6
    )


def test_bad_inputs_raise():
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="average"):
        L.logit_margin(logits, labels, average="batch")
    with pytest.raises(ValueError, match="tie"):
        L.logit_margin(logits, labels, tie="last")
    with pytest.raises(ValueError, match="labels must have shape"):
        L.token_ce_mean(logits, labels[:, :-1])
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        L.token_ce_mean(logits[0], labels)
    with pytest.raises(ValueError, match="T >= 2"):
        L.token_ce_mean(logits[:, :1], labels[:, :1])
    with pytest.raises(ValueError, match="mask must have shape"):
        L.kl_to_reference(logits, logits, labels[:, 1:] != IGNORE)
