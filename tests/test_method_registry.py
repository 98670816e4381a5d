"""Adding an unlearning method is one registration: a toy method defined and registered in this file
runs through the training loop (`train.run`, the same code path as `cel-jax unlearn`) with the
primal-dual solver, and the step computes exactly its loss."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from test_train import model_dir, tiny_cfg  # noqa: F401  (the tiny model fixture)

from cel_jax.training import train
from cel_jax.unlearning import losses, methods

TOY = "toy_scaled_ascent"


def toy_scaled_ascent(q, *, scale: float = 2.0, compat: bool = False):
    """Gradient ascent with a weight: −scale · (token-mean NLL of the forget answers)."""
    nll = losses.token_ce_mean(q["forget_logits"], q["forget_labels"])
    return -scale * nll, {}


@pytest.fixture
def toy_method():
    methods.register(
        methods.MethodSpec(
            name=TOY,
            forget_fn=toy_scaled_ascent,
            forget_inputs=("forget_logits", "forget_labels"),
            forget_args=("scale",),
            needs_hidden_layer=None,
            needs_idk=False,
            retain_loss=None,
            defaults={"scale": 2.0, "gamma": 1.0, "alpha": 1.0, "retain_loss": None},
        )
    )
    yield TOY
    methods.unregister(TOY)


def test_registration_is_checked(toy_method):
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.get_method(toy_method))
    spec = methods.get_method("grad_ascent")
    bad = methods.MethodSpec(
        "bad", spec.forget_fn, spec.forget_inputs, ("beta",), None, False, None, {"retain_loss": None}
    )
    with pytest.raises(ValueError, match=r"defaults lack \['beta'\]"):
        methods.register(bad)
    assert "bad" not in methods.METHODS


def test_a_method_added_in_one_file_runs_through_the_loop(toy_method, model_dir, tmp_path):  # noqa: F811
    record = methods.resolve_method(toy_method, {"scale": 3.0}, solver="primal_dual")
    assert record.retain_kind == "nll"  # forget-only under primal_dual: the retain NLL is bounded
    assert record.answer_row_parts == {"forget", "retain"} and not record.reference
    rng = np.random.default_rng(0)
    q = {"forget_logits": jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)}
    q["forget_labels"] = jnp.asarray([[-100, 3, 4, 5, 6], [-100, -100, 1, 2, 3]])
    loss, _ = record.forget_loss(q)
    ga, _ = methods.grad_ascent(q)
    np.testing.assert_allclose(float(loss), 3.0 * float(ga), rtol=1e-6)  # grad_ascent is −NLL

    cfg = tiny_cfg(model_dir, method=toy_method, max_steps=3)
    cfg.method_args = {"scale": 0.5}
    out = train.run(cfg, str(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert out["summary"]["method"] == toy_method and [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["forget_loss"] < 0 and math.isfinite(r["retain_loss"]) for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["method"] == toy_method


def test_an_unregistered_name_is_refused(model_dir, tmp_path):  # noqa: F811
    cfg = tiny_cfg(model_dir, method=TOY)
    with pytest.raises(ValueError, match=f"unknown unlearning method '{TOY}'"):
        train.run(cfg, str(tmp_path))
