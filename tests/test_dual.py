"""unlearning.dual: each rule against a plain-Python transcription, the Lagrangians and their gradients,
one compile for any λ, validation, and dual settings living in cfg.dual only.

Axes: M micro-batches.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cel_jax import config_base
from cel_jax.training import checks
from cel_jax.unlearning import dual


def py_gda(lam, v, lr, lam_max=None):
    """The reference rule (open-unlearning pdu.py): max(0, lam + lr * (L_r - eps))."""
    new = max(0.0, lam + lr * v)
    return new if lam_max is None else min(new, lam_max)


def py_nupi(lams_and_violations, lam0, lr, kp, nu):
    """νPI as written in Sohrabi et al. (ξ_{-1} = 0), with the projection onto λ >= 0."""
    lam, xi_prev, out = lam0, 0.0, []
    for v in lams_and_violations:
        xi = nu * xi_prev + (1 - nu) * v
        lam = max(0.0, lam + lr * (v + kp * (xi - xi_prev)))
        xi_prev = xi
        out.append(lam)
    return out


VIOLATIONS = [0.4, 0.2, -0.1, -0.5, 0.3, 1.0, -2.0, 0.05]


def run_rule(rule, lam0, vs, active=None):
    st = dual.init(rule, lam0)
    f = jax.jit(lambda st, v, a: dual.update(rule, st, v, a))
    out = []
    for k, v in enumerate(vs):
        st = f(st, jnp.float32(v), jnp.bool_(True if active is None else active[k]))
        out.append(float(st.lam))
    return out


@pytest.mark.parametrize("lam_max", [None, 2.5])
def test_gda_is_the_reference_rule(lam_max):
    rule = dual.Rule("gda", lr=1.5, lam_max=lam_max)
    lam, want = 1.0, []
    for v in VIOLATIONS:
        lam = py_gda(lam, v, 1.5, lam_max)
        want.append(lam)
    np.testing.assert_allclose(run_rule(rule, 1.0, VIOLATIONS), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kp,nu", [(0.0, 0.0), (5.0, 0.0), (3.0, 0.5)])
def test_nupi_matches_its_equations(kp, nu):
    got = run_rule(dual.Rule("pi", lr=0.7, kp=kp, nu=nu), 2.0, VIOLATIONS)
    np.testing.assert_allclose(got, py_nupi(VIOLATIONS, 2.0, 0.7, kp, nu), rtol=1e-5, atol=1e-6)
    if kp == 0.0:  # κ_p = 0 is gda exactly
        np.testing.assert_allclose(got, run_rule(dual.Rule("gda", lr=0.7), 2.0, VIOLATIONS), rtol=1e-6)


def test_pi_reacts_to_a_new_violation_at_once_and_releases_when_feasible():
    vs = [0.5, 0.5, -0.5, -0.5]
    gda = run_rule(dual.Rule("gda", lr=1.0), 1.0, vs)
    pi = run_rule(dual.Rule("pi", lr=1.0, kp=4.0), 1.0, vs)
    assert pi[0] > gda[0]  # the proportional term adds κ_p·v on the first violation
    assert pi[2] < gda[2]  # and takes it back as soon as the constraint holds


@pytest.mark.parametrize("mode", dual.MODES)
def test_advance_runs_the_rule_only_at_its_modes_point(mode):
    rule = dual.Rule(name="pi", lr=2.0, kp=1.0, nu=0.5)
    s0 = dual.init(rule, 1.0)
    want = dual.update(rule, s0, dual.violation(rule, 3.5, 3.0))
    for at in ("microbatch", "step", "epoch"):
        got = dual.advance(rule, mode, at, s0, 3.5, 3.0)
        expect = want if at == mode else s0  # "fixed" never moves
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expect), strict=True):
            assert float(a) == float(b), (mode, at)
    inactive = dual.advance(rule, mode, mode, s0, 3.5, 3.0, active=False)
    assert all(
        float(a) == float(b) for a, b in zip(jax.tree.leaves(inactive), jax.tree.leaves(s0), strict=True)
    )


def test_inactive_updates_leave_the_whole_state_untouched():
    rule = dual.Rule("pi", lr=1.0, kp=2.0, nu=0.3)
    active = [False, False, True, False, True, True, True, True]
    got = run_rule(rule, 1.0, VIOLATIONS, active)
    want = py_nupi([v for v, a in zip(VIOLATIONS, active, strict=True) if a], 1.0, 1.0, 2.0, 0.3)
    assert got[:2] == [1.0, 1.0]
    np.testing.assert_allclose([g for g, a in zip(got, active, strict=True) if a], want, rtol=1e-5)


def test_lagrangian_value_and_gradients():
    gda = dual.Rule("gda")
    value = dual.lagrangian(gda, 2.0, 0.5, 100.0, 0.3, forget_weight=0.5)
    np.testing.assert_allclose(value, 0.5 * 2.0 + 100.0 * (0.5 - 0.3), rtol=1e-6)
    g_f, g_r = jax.grad(lambda f, r: dual.lagrangian(gda, f, r, 100.0, 0.3), argnums=(0, 1))(2.0, 0.5)
    np.testing.assert_allclose([g_f, g_r], [1.0, 100.0], rtol=1e-6)
    g_lam = jax.grad(lambda lam: dual.lagrangian(gda, 2.0, 0.5, lam, 0.3))(3.0)
    assert float(g_lam) == 0.0  # λ is a dual variable: the primal gradient never moves it


@pytest.mark.parametrize("lam,l_r", [(2.0, 0.8), (2.0, 0.1), (0.0, 0.1), (0.5, -3.0)])
def test_augmented_lagrangian_gradient_is_the_shifted_multiplier(lam, l_r):
    rule = dual.Rule("alm", rho=4.0)
    eps = 0.3
    g_r = jax.grad(lambda r: dual.lagrangian(rule, 1.0, r, lam, eps))(l_r)
    want = max(0.0, lam + 4.0 * (l_r - eps))  # PHR: ∂ψ/∂L_r = [λ + ρ v]₊
    np.testing.assert_allclose(g_r, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dual.effective_multiplier(rule, lam, l_r - eps), want, rtol=1e-6, atol=1e-6)
    value = dual.lagrangian(rule, 1.0, l_r, lam, eps)
    np.testing.assert_allclose(value, 1.0 + (max(0.0, lam + 4 * (l_r - eps)) ** 2 - lam**2) / 8, rtol=1e-5)


def test_one_compile_for_any_lambda_and_violation():
    traces = []
    rule = dual.Rule("pi", lr=1.0, kp=2.0)

    def step(st, v, a):
        traces.append(1)
        return dual.update(rule, st, v, a)

    f = jax.jit(step)
    st = dual.init(rule, 3.0)
    for k in range(4):
        st = f(st, jnp.float32(0.1 * k - 0.2), jnp.bool_(k % 2 == 0))
    assert len(traces) == 1


def test_eps_from_reference():
    assert dual.eps_from_reference(0.2, 0.5) == pytest.approx(0.3)
    assert dual.eps_from_reference(jnp.float32(1.0), 0) == pytest.approx(1.0)
    for bad_ref in (0.0, -1.0, math.nan, math.inf, "x"):
        with pytest.raises(ValueError, match="ref_retain_loss"):
            dual.eps_from_reference(bad_ref, 0.1)
    for bad_alpha in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha"):
            dual.eps_from_reference(0.2, bad_alpha)


def test_validate_names_the_bad_key():
    dual.validate(config_base.unlearn_config().dual)  # the package default
    base = config_base.authors_dual()
    for rule in dual.RULES:
        for mode in dual.MODES:
            d = ml_collections.ConfigDict(base.to_dict())
            d.rule, d.mode = rule, mode
            dual.validate(d)
    cases = [
        (dict(eps=0.0), "dual.eps"),
        (dict(eps=math.nan), "dual.eps"),
        (dict(lr=-1.0), "dual.lr"),
        (dict(lam0=-0.5), "dual.lam0"),
        (dict(lam0=math.inf), "dual.lam0"),
        (dict(kp=-1.0), "dual.kp"),
        (dict(rho=0.0), "dual.rho"),
        (dict(nu=1.0), "dual.nu"),
        (dict(lam_max=0.0), "dual.lam_max"),
        (dict(lam_max=50.0), "below dual.lam0"),
        (dict(mode="sometimes"), "dual.mode"),
        (dict(rule="adam"), "dual.rule"),
        (dict(eps_alpha=0.2), "not both"),
    ]
    for change, msg in cases:
        d = ml_collections.ConfigDict(base.to_dict())
        d.update(change)
        with pytest.raises(ValueError, match=msg):
            dual.validate(d)


@pytest.mark.parametrize(
    "key,right",
    [
        ("lam0", "lam0"),
        ("dual_lr", "lr"),
        ("retain_loss_eps", "eps"),
        ("dual_warmup_epochs", "warmup_epochs"),
    ],
)
def test_dual_settings_in_method_args_name_the_right_key(key, right):
    cfg = config_base.unlearn_config()
    cfg.method_args[key] = 1.0
    with pytest.raises(ValueError, match=rf"--config\.dual\.{right}="):
        checks.validate_config(cfg, "unlearn")


def test_the_default_rule_is_the_measured_recipe_and_the_authors_configs_keep_gda():
    """The package default is the recipe the TOFU-mini sweep and the main job measured (docs/dual.md);
    the configs that reproduce the authors' runs keep their gda, λ0 100, η 5, ε 0.3, 5 warm-start epochs."""
    from bench import tofu_sweep

    d = config_base.unlearn_config().dual
    assert (d.rule, d.eps, d.eps_alpha, d.normalize_forget, d.relative) == ("alm", None, 1.0, True, True)
    assert {k: d[k] for k in tofu_sweep.DUAL} == tofu_sweep.DUAL  # the gains the sweep measured
    authors = ("gda", 100.0, 5.0, 0.3, None, 5)
    for d in (config_base.tofu_pdu_config("t", 10).dual, config_base.authors_dual()):
        assert (d.rule, d.lam0, d.lr, d.eps, d.eps_alpha, d.warmup_epochs) == authors
        assert not d.normalize_forget and not d.relative
