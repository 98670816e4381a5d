"""cel_jax.dual: Lagrangian, projected dual ascent step by step, micro-batch scan, compile count, validation.

Axes: M micro-batches.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cel_jax import dual


def py_update(lam, l_r, eps, lr, active=True, lam_max=None):
    """The reference rule in plain Python (pdu.py): max(0, lam + lr * (L_r - eps)), optional upper bound."""
    if not active:
        return lam
    new = max(0.0, lam + lr * (l_r - eps))
    return new if lam_max is None else min(new, lam_max)


def test_lagrangian_value_and_gradients():
    value = dual.lagrangian(2.0, 0.5, 100.0, 0.3, gamma=0.5)
    np.testing.assert_allclose(value, 0.5 * 2.0 + 100.0 * (0.5 - 0.3), rtol=1e-6)
    g_f, g_r, g_lam = jax.grad(dual.lagrangian, argnums=(0, 1, 2))(2.0, 0.5, 100.0, 0.3)
    np.testing.assert_allclose([g_f, g_r, g_lam], [1.0, 100.0, 0.5 - 0.3], rtol=1e-6)


def test_dual_update_step_by_step():
    # Ascent when the constraint is violated, descent when slack.
    np.testing.assert_allclose(dual.dual_update(100.0, 0.5, 0.3, 5.0), 101.0, rtol=1e-6)
    np.testing.assert_allclose(dual.dual_update(100.0, 0.1, 0.3, 5.0), 99.0, rtol=1e-6)
    # Projection at 0: never negative.
    assert float(dual.dual_update(0.5, 0.0, 0.3, 5.0)) == 0.0
    assert float(dual.dual_update(0.0, 0.0, 0.3, 5.0)) == 0.0
    # Upper bound.
    np.testing.assert_allclose(dual.dual_update(100.0, 10.0, 0.3, 5.0, lam_max=120.0), 120.0)
    np.testing.assert_allclose(dual.dual_update(100.0, 0.5, 0.3, 5.0, lam_max=120.0), 101.0, rtol=1e-6)
    # Inactive (warm start): unchanged even when the update would project or clip.
    assert float(dual.dual_update(100.0, 0.0, 0.3, 1e6, active=False)) == 100.0
    assert float(dual.dual_update(100.0, 9.0, 0.3, 5.0, active=jnp.array(False), lam_max=1.0)) == 100.0
    assert dual.dual_update(1.0, 0.5, 0.3, 1.0).dtype == jnp.float32


def test_dual_update_does_not_backpropagate_into_retain_loss():
    g = jax.grad(lambda l_r: dual.dual_update(1.0, l_r, 0.3, 5.0))(0.5)
    assert float(g) == 0.0


def test_sequence_of_updates_matches_python_rule():
    losses_M = np.array([0.9] * 5 + [1.0] * 4 + [0.0] * 6 + [0.6, 0.2, 0.9, 0.9, 0.1], np.float32)
    lam, lam_py, seen = jnp.float32(1.0), 1.0, []
    for k, l_r in enumerate(losses_M):
        active = k >= 5  # warm start: first 5 updates are skipped
        lam = dual.dual_update(lam, l_r, 0.5, 1.0, active, lam_max=2.5)
        lam_py = py_update(lam_py, float(l_r), 0.5, 1.0, active, lam_max=2.5)
        np.testing.assert_allclose(lam, lam_py, rtol=1e-5, atol=1e-6)
        seen.append(lam_py)
    assert seen[4] == 1.0 and 0.0 in seen and 2.5 in seen  # held, projected at 0, clipped at lam_max


@pytest.mark.parametrize("lam_max", [None, 2.5])
def test_per_microbatch_scan_equals_python_loop(lam_max):
    rng = np.random.default_rng(1)
    losses_M = rng.uniform(0.0, 1.2, size=8).astype(np.float32)
    active_M = np.array([0, 0, 1, 1, 1, 0, 1, 1], bool)
    lams_M, final = jax.jit(dual.per_microbatch_dual, static_argnames="lam_max")(
        1.0, losses_M, 0.5, 3.0, active_M, lam_max=lam_max
    )
    lam, used = 1.0, []
    for l_r, act in zip(losses_M, active_M, strict=True):
        used.append(lam)
        lam = py_update(lam, float(l_r), 0.5, 3.0, bool(act), lam_max)
    np.testing.assert_allclose(lams_M, used, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final, lam, rtol=1e-5, atol=1e-6)
    assert lams_M[0] == 1.0  # micro-batch 0 uses the incoming lam


def test_per_microbatch_scalar_active_and_bad_shape():
    lams_M, final = dual.per_microbatch_dual(2.0, jnp.array([0.1, 0.2]), 0.3, 1.0, False)
    np.testing.assert_allclose(lams_M, [2.0, 2.0])
    assert float(final) == 2.0
    with pytest.raises(ValueError, match="1-D"):
        dual.per_microbatch_dual(2.0, jnp.zeros((2, 2)), 0.3, 1.0)


def test_epoch_update_uses_mean_retain_loss():
    out = dual.epoch_dual_update(10.0, jnp.array([0.2, 0.4, 0.9]), 0.3, 2.0)
    np.testing.assert_allclose(out, 10.0 + 2.0 * (0.5 - 0.3), rtol=1e-6)
    assert float(dual.epoch_dual_update(10.0, jnp.array([0.2]), 0.3, 2.0, active=False)) == 10.0


def test_warm_start_gate_matches_reference_callback():
    # Reference: updates are enabled at the end of epoch e (1-based) once e >= W, i.e. after W epochs.
    assert [bool(dual.dual_active(e, 5)) for e in range(8)] == [False] * 5 + [True] * 3
    assert bool(dual.dual_active(0, 0))


def test_jit_compiles_once_for_new_lam_eps_lr_active():
    traces = []

    def step(lam, l_r, eps, lr, active):
        traces.append(1)  # Python side effect: runs once per trace
        return dual.dual_update(lam, l_r, eps, lr, active, lam_max=50.0)

    f = jax.jit(step)
    lam = jnp.float32(1.0)
    for k, (eps, lr) in enumerate([(0.3, 1.0), (0.5, 2.0), (0.1, 5.0), (1.5, 0.5)]):
        lam = f(lam, jnp.float32(0.4 + 0.1 * k), jnp.float32(eps), jnp.float32(lr), jnp.bool_(k % 2 == 0))
    assert len(traces) == 1
    assert f._cache_size() == 1


def test_eps_from_reference():
    assert dual.eps_from_reference(0.2, 0.5) == pytest.approx(0.3)
    assert dual.eps_from_reference(jnp.float32(1.0), 0) == pytest.approx(1.0)
    for bad_ref in (0.0, -1.0, math.nan, math.inf, "x"):
        with pytest.raises(ValueError, match="ref_retain_loss"):
            dual.eps_from_reference(bad_ref, 0.1)
    for bad_alpha in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha"):
            dual.eps_from_reference(0.2, bad_alpha)


def test_validate_dual_config():
    for mode in dual.DUAL_MODES:
        dual.validate_dual_config(0.3, 5.0, 100.0, None, mode)
    dual.validate_dual_config(0.3, 0.0, 0.0, 1000.0, "step")
    cases = [
        (dict(eps=0.0), "eps"),
        (dict(eps=-1.0), "eps"),
        (dict(eps=math.nan), "eps"),
        (dict(eps=math.inf), "eps"),
        (dict(lr=-1.0), "step size"),
        (dict(lr=math.nan), "step size"),
        (dict(lam0=-0.5), "lam0"),
        (dict(lam0=math.inf), "lam0"),
        (dict(lam_max=0.0), "lam_max"),
        (dict(lam_max=math.nan), "lam_max"),
        (dict(lam_max=50.0), "below lam0"),
        (dict(mode="sometimes"), "mode"),
    ]
    base = dict(eps=0.3, lr=5.0, lam0=100.0, lam_max=None, mode="step")
    for change, msg in cases:
        with pytest.raises(ValueError, match=msg):
            dual.validate_dual_config(**{**base, **change})
