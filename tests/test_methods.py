"""unlearning.methods against torch ports of the open-unlearning formulas (values and gradients), closed forms
for the corrected defaults, the registry, and the idk answer file.

Axes: B batch, T length, V vocabulary, D hidden width.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cel_jax.data import train_data
from cel_jax.unlearning import dual, methods
from cel_jax.unlearning.losses import IGNORE

B, T, V, D = 3, 8, 128, 16  # V >= 100 so the reference's index wrap at label -100 is defined


def make_labels(rng, b=B, t=T, v=V):
    labels = rng.integers(0, v, size=(b, t)).astype(np.int64)
    labels[0, :3] = IGNORE  # prompt 3, answer 5
    labels[1, :2] = IGNORE  # prompt 2, answer 4, padding 2
    labels[1, 6:] = IGNORE
    labels[2, :4] = IGNORE  # prompt 4, answer 4
    return labels


def make_q(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: (rng.normal(size=shape) * 2).astype(np.float32)
    q = {
        "forget_logits": f(B, T, V),
        "forget_labels": make_labels(rng),
        "retain_logits": f(B, T, V),
        "retain_labels": make_labels(rng),
        "ref_forget_logits": f(B, T, V),
        "ref_retain_logits": f(B, T, V),
        "idk_logits": f(B, T + 2, V),
        "idk_labels": make_labels(rng, t=T + 2),
        "forget_hidden": f(B, T, D),
        "retain_hidden": f(B, T, D),
        "ref_retain_hidden": f(B, T, D),
        "control_vec": np.abs(f(D)),
    }
    ref_idk_logits = f(B, T + 2, V)
    q["ref_forget_nll"] = np_seq_nll(q["ref_forget_logits"], q["forget_labels"])
    q["ref_idk_nll"] = np_seq_nll(ref_idk_logits, q["idk_labels"])
    return q


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_seq_nll(logits, labels):
    """Per-sequence sum of shifted CE over non-ignored targets (compute_batch_nll), float32 [B]."""
    lp, y = np_log_softmax(logits[:, :-1]), labels[:, 1:]
    picked = np.take_along_axis(lp, np.where(y == IGNORE, 0, y)[..., None], -1)[..., 0]
    return (-(picked * (y != IGNORE)).sum(-1)).astype(np.float32)


def np_rows(z, labels, shifted=True):
    """Logit rows used by the PDU/entropy losses and their mask, float64."""
    if shifted:
        return np.asarray(z[:, :-1], np.float64), labels[:, 1:] != IGNORE
    return np.asarray(z, np.float64), labels != IGNORE


def tt(x, grad=False):
    t = torch.tensor(np.asarray(x))
    return t.requires_grad_(True) if grad else t


# ------------------------------------------------------------------------------ torch ports of the reference


def t_ce_mean(logits, labels):  # HF outputs.loss
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def t_batch_nll(logits, labels):  # trainer/utils.py::compute_batch_nll
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")
    return loss_fn(logits[..., :-1, :].transpose(-1, -2), labels[..., 1:]).sum(dim=-1)


def t_npo(logits, labels, ref_nll, beta):  # compute_dpo_loss(win_inputs=None, lose=forget)
    lose_log_ratio = -(t_batch_nll(logits, labels) - ref_nll)
    return -2 / beta * F.logsigmoid(beta * (0.0 - lose_log_ratio)).mean()


def t_simnpo(logits, labels, beta, delta):
    loss = t_batch_nll(logits, labels) / (labels != -100).sum(-1) - delta
    return -F.logsigmoid(beta * loss).mean() * 2 / beta


def t_dpo(win_logits, win_labels, win_ref_nll, lose_logits, lose_labels, lose_ref_nll, beta):
    win = -(t_batch_nll(win_logits, win_labels) - win_ref_nll)
    lose = -(t_batch_nll(lose_logits, lose_labels) - lose_ref_nll)
    return -2 / beta * F.logsigmoid(beta * (win - lose)).mean()


def t_undial(logits, teacher_logits, labels, beta):  # utils.compute_undial_loss
    shift_labels, shift_logits = labels[..., 1:], logits[..., :-1, :]
    shift_teacher = teacher_logits[..., :-1, :]
    mask = torch.zeros_like(shift_teacher)
    batch_idx = torch.arange(mask.shape[0]).view(-1, 1, 1)
    seq_idx = torch.arange(mask.shape[1]).view(1, -1, 1)
    mask[batch_idx, seq_idx, shift_labels.unsqueeze(-1)] = 1.0
    soft_label = F.softmax(shift_teacher - mask * beta, dim=-1)
    loss = torch.nn.CrossEntropyLoss(reduction="none")(
        shift_logits.reshape(-1, shift_logits.size(-1)), soft_label.reshape(-1, soft_label.size(-1))
    )
    return loss.mean()


def t_ceu(logits, labels, n):  # ceu.py::compute_batch_ceu + cross_entropy_unlearning_loss
    valid = labels != -100
    update = (valid.cumsum(dim=-1) <= n) & valid
    labels = labels.masked_fill(update, -100)[..., 1:]
    logits = logits[..., :-1, :]
    vmask = labels != -100
    vl, vy = logits[vmask], labels[vmask]
    target = vl.detach().clone()
    target.scatter_(dim=-1, index=vy.unsqueeze(-1), value=float("-inf"))
    return F.cross_entropy(input=vl, target=F.softmax(target, dim=-1))


def _t_token_ce(logits, labels):
    shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
    lm = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1)
    )
    return lm, shift_labels.reshape(-1) != -100


def t_wga(logits, labels, beta):
    lm, keep = _t_token_ce(logits, labels)
    w = ((-lm).exp().detach()) ** beta
    return -(w * lm)[keep].mean()


def t_satimp(logits, labels, beta1, beta2):
    lm, keep = _t_token_ce(logits, labels)
    w = ((-lm).exp().detach()) ** beta1 * (1 - (-lm).exp().detach()) ** beta2
    return -(w * lm)[keep].mean()


def t_activation_loss(a, b, mask):  # rmu.py::compute_activation_loss
    sq = F.mse_loss(a, b, reduction="none")
    s = (sq * mask.unsqueeze(-1).expand_as(sq)).mean(dim=2).sum(dim=1)
    return (s / mask.sum(dim=-1, keepdim=True)).mean()


def t_kl(logits, ref_logits):  # utils.compute_kl_divergence
    ref = F.log_softmax(ref_logits, dim=-1).view(-1, ref_logits.shape[-1])
    cur = F.log_softmax(logits, dim=-1).view(-1, logits.shape[-1])
    return F.kl_div(cur, ref, reduction="batchmean", log_target=True)


def t_pdu_pr147(logits, labels):  # pdu.py after PR147
    z = logits.reshape(-1, logits.size(-1))
    loss = (z.max(dim=-1)[0] - z.mean(dim=-1)) ** 2
    mask = (labels != -100).reshape(-1)
    return (loss * mask).sum() / mask.sum()


# ------------------------------------------------------------------------------ helpers


def jit(f):
    """jax.jit without LLVM optimisation: these tests compile many tiny programs (halves compile time)."""
    return jax.jit(f, compiler_options={"xla_backend_optimization_level": 0})


@functools.cache
def _jitted(name, key, static, retain):
    fn = methods.retain_loss if retain else getattr(methods, name)

    def loss(x, q):
        q = {**q, key: x}
        return fn(name, q, **dict(static)) if retain else fn(q, **dict(static))[0]

    return jit(jax.value_and_grad(loss))


def jax_vg(name, q, key="forget_logits", retain=False, **kw):
    """(value, d value / d q[key]) of a method's forget loss (or retain loss `name`) under jit."""
    q = {k: jnp.asarray(v) for k, v in q.items()}
    return _jitted(name, key, tuple(sorted(kw.items())), retain)(
        q[key], {k: v for k, v in q.items() if k != key}
    )


def check(jax_out, torch_loss, torch_x, rtol=1e-5, atol=1e-6):
    value, g = jax_out
    torch_loss.backward()
    np.testing.assert_allclose(value, torch_loss.item(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(g, torch_x.grad.numpy(), rtol=rtol * 10, atol=atol)


# ------------------------------------------------------------------------------ forget losses vs torch


def test_grad_ascent_and_grad_diff():
    q = make_q(0)
    x = tt(q["forget_logits"], True)
    check(jax_vg("grad_ascent", q), -t_ce_mean(x, tt(q["forget_labels"])), x)
    trace = lambda fn: str(jax.make_jaxpr(lambda q: fn(q)[0])(q))  # no compile needed
    assert trace(methods.grad_diff) == trace(methods.grad_ascent)


def test_npo_matches_reference():
    q = make_q(1)
    x = tt(q["forget_logits"], True)
    check(jax_vg("npo", q, beta=0.1), t_npo(x, tt(q["forget_labels"]), tt(q["ref_forget_nll"]), 0.1), x)


def test_npo_sequence_without_targets_default_vs_compat():
    q = make_q(2)
    q["forget_labels"][1] = IGNORE
    x = tt(q["forget_logits"], True)
    ref = t_npo(x, tt(q["forget_labels"]), tt(q["ref_forget_nll"]), 0.1)  # r=0 term: (2/beta) log 2
    check(jax_vg("npo", q, beta=0.1, compat=True), ref, x)
    keep = [0, 2]  # default: the sequence without targets is left out of the mean
    sub = t_npo(
        tt(q["forget_logits"][keep]), tt(q["forget_labels"][keep]), tt(q["ref_forget_nll"][keep]), 0.1
    )
    np.testing.assert_allclose(jax_vg("npo", q, beta=0.1)[0], sub.item(), rtol=1e-5)


def test_simnpo_matches_reference():
    q = make_q(3)
    x = tt(q["forget_logits"], True)
    check(jax_vg("simnpo", q, beta=4.5, delta=0.3), t_simnpo(x, tt(q["forget_labels"]), 4.5, 0.3), x)


def test_idk_dpo_matches_reference():
    q = make_q(4)
    x = tt(q["forget_logits"], True)
    t_loss = t_dpo(
        tt(q["idk_logits"]), tt(q["idk_labels"]), tt(q["ref_idk_nll"]),
        x, tt(q["forget_labels"]), tt(q["ref_forget_nll"]), 0.1,
    )  # fmt: skip
    check(jax_vg("idk_dpo", q, beta=0.1), t_loss, x)
    # Gradient also flows through the idk (win) branch, with the opposite sign of the forget branch.
    xi = tt(q["idk_logits"], True)
    t_loss = t_dpo(
        xi, tt(q["idk_labels"]), tt(q["ref_idk_nll"]),
        tt(q["forget_logits"]), tt(q["forget_labels"]), tt(q["ref_forget_nll"]), 0.1,
    )  # fmt: skip
    t_loss.backward()
    g_idk = jit(jax.grad(lambda xi, q: methods.idk_dpo({**q, "idk_logits": xi})[0]))(q["idk_logits"], q)
    np.testing.assert_allclose(g_idk, xi.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_undial_compat_matches_reference_including_index_wrap():
    q = make_q(5)
    x = tt(q["forget_logits"], True)
    t_loss = t_undial(x, tt(q["ref_forget_logits"]), tt(q["forget_labels"]), 10.0)
    check(jax_vg("undial", q, beta=10.0, compat=True), t_loss, x)


def test_undial_default_averages_answer_targets_only():
    q = make_q(6)
    z, zr, labels = q["forget_logits"], q["ref_forget_logits"], q["forget_labels"]
    terms = []
    for b in range(B):
        for t in range(T - 1):
            y = labels[b, t + 1]
            if y == IGNORE:
                continue
            soft = zr[b, t].astype(np.float64) - 10.0 * np.eye(V)[y]
            soft = np.exp(soft - soft.max())
            soft /= soft.sum()
            lp = z[b, t].astype(np.float64) - z[b, t].max()
            lp -= np.log(np.exp(lp).sum())
            terms.append(-(soft * lp).sum())
    value = jax_vg("undial", q, beta=10.0)[0]
    np.testing.assert_allclose(value, np.mean(terms), rtol=1e-5)
    assert abs(float(value) - float(jax_vg("undial", q, beta=10.0, compat=True)[0])) > 1e-3
    small = {k: v[..., :64] if k.endswith("logits") else v for k, v in q.items()}
    small["forget_labels"] = np.where(q["forget_labels"] == IGNORE, IGNORE, q["forget_labels"] % 64)
    with pytest.raises(ValueError, match="V >= 100"):
        methods.undial(small, compat=True)


def test_ceu_matches_reference():
    q = make_q(7)
    x = tt(q["forget_logits"], True)
    check(jax_vg("ceu", q, ignore_first_n_answer_tokens=1), t_ceu(x, tt(q["forget_labels"]), 1), x)


def test_wga_and_satimp_match_reference():
    q = make_q(8)
    q["forget_logits"] = q["forget_logits"] * 0.3  # moderate probabilities so the weights are not tiny
    x = tt(q["forget_logits"], True)
    check(jax_vg("wga", q, beta=1.0), t_wga(x, tt(q["forget_labels"]), 1.0), x)
    x = tt(q["forget_logits"], True)
    check(jax_vg("satimp", q, beta1=2.0, beta2=1.0), t_satimp(x, tt(q["forget_labels"]), 2.0, 1.0), x)


def test_rmu_compat_matches_reference_forget_and_embed_diff_retain():
    q = make_q(9)
    h = tt(q["forget_hidden"], True)
    c = tt(q["control_vec"]).view(1, 1, D).expand(B, T, D)
    t_loss = t_activation_loss(h, c, tt(q["forget_labels"]) != -100)
    check(jax_vg("rmu", q, key="forget_hidden", compat=True), t_loss, h)
    h = tt(q["retain_hidden"], True)
    t_loss = t_activation_loss(h, tt(q["ref_retain_hidden"]), tt(q["retain_labels"]) != -100)
    check(jax_vg("embed_diff", q, key="retain_hidden", retain=True, compat=True), t_loss, h)


def test_rmu_default_is_per_sequence_masked_mse():
    q = make_q(9)
    h, c, labels = (
        q["forget_hidden"].astype(np.float64),
        q["control_vec"].astype(np.float64),
        q["forget_labels"],
    )
    per_seq = [
        np.mean([np.mean((h[b, t] - c) ** 2) for t in range(T) if labels[b, t] != IGNORE]) for b in range(B)
    ]
    value = jax_vg("rmu", q, key="forget_hidden")[0]
    np.testing.assert_allclose(value, np.mean(per_seq), rtol=1e-5)
    # Unequal answer lengths (5, 4, 4 tokens): the reference's broadcast gives a different number.
    assert abs(float(value) - float(jax_vg("rmu", q, key="forget_hidden", compat=True)[0])) > 1e-4
    same_len = dict(q, forget_labels=np.where(np.arange(T) >= 4, labels.clip(0), IGNORE).astype(np.int64))
    np.testing.assert_allclose(
        jax_vg("rmu", same_len, key="forget_hidden")[0],
        jax_vg("rmu", same_len, key="forget_hidden", compat=True)[0],
        rtol=1e-6,
    )


def test_rmu_sequence_without_targets_is_skipped_not_nan():
    q = make_q(9)
    q["forget_labels"][0] = IGNORE
    h, c, labels = (
        q["forget_hidden"].astype(np.float64),
        q["control_vec"].astype(np.float64),
        q["forget_labels"],
    )
    per_seq = [
        np.mean([np.mean((h[b, t] - c) ** 2) for t in range(T) if labels[b, t] != IGNORE]) for b in (1, 2)
    ]
    for compat in (False, True):
        value = jax_vg("rmu", q, key="forget_hidden", compat=compat)[0]
        assert np.isfinite(float(value))
    np.testing.assert_allclose(jax_vg("rmu", q, key="forget_hidden")[0], np.mean(per_seq), rtol=1e-5)


def test_rmu_control_vector():
    c = methods.rmu_control_vector(jax.random.key(0), D, steering_coeff=2.0)
    assert c.shape == (D,) and bool(jnp.all(c >= 0))
    np.testing.assert_allclose(jnp.linalg.norm(c), 2.0, rtol=1e-6)


def test_pdu_compat_matches_pr147_and_default_is_shifted():
    q = make_q(11)
    x = tt(q["forget_logits"], True)
    check(jax_vg("pdu", q, compat=True), t_pdu_pr147(x, tt(q["forget_labels"])), x)
    z, m = np_rows(q["forget_logits"], q["forget_labels"])
    per = (z.max(-1) - z.mean(-1)) ** 2
    np.testing.assert_allclose(jax_vg("pdu", q)[0], per[m].mean(), rtol=1e-5)


def test_pdu_entropy():
    q = make_q(12)
    outs = jit(lambda q: [methods.pdu_entropy(q), methods.pdu_entropy(q, compat=True)])(q)
    for compat, (loss, aux) in zip((False, True), outs, strict=True):
        z, m = np_rows(q["forget_logits"], q["forget_labels"], shifted=not compat)
        lp = np_log_softmax(z)
        h = -(np.exp(lp) * lp).sum(-1)
        np.testing.assert_allclose(loss, -h[m].mean(), rtol=1e-5)
        np.testing.assert_allclose(aux["forget_entropy"], h[m].mean(), rtol=1e-5)


# ------------------------------------------------------------------------------ retain losses


def test_retain_nll_and_kl():
    q = make_q(13)
    x = tt(q["retain_logits"], True)
    check(jax_vg("nll", q, key="retain_logits", retain=True), t_ce_mean(x, tt(q["retain_labels"])), x)
    x = tt(q["retain_logits"], True)
    t_loss = t_kl(x, tt(q["ref_retain_logits"]))
    check(jax_vg("kl", q, key="retain_logits", retain=True, compat=True), t_loss, x)
    lp, lq = np_log_softmax(q["retain_logits"][:, :-1]), np_log_softmax(q["ref_retain_logits"][:, :-1])
    masked = (np.exp(lq) * (lq - lp)).sum(-1)[q["retain_labels"][:, 1:] != IGNORE].mean()
    default = jax_vg("kl", q, key="retain_logits", retain=True)[0]
    np.testing.assert_allclose(default, masked, rtol=1e-5)
    assert abs(float(default) - t_loss.item()) > 1e-3
    with pytest.raises(ValueError, match="unknown retain loss"):
        methods.retain_loss("mse", q)
    with pytest.raises(ValueError, match="ref_retain_logits"):
        methods.retain_loss("kl", {"retain_logits": q["retain_logits"], "retain_labels": q["retain_labels"]})


def test_scalarised():
    assert float(methods.scalarised(jnp.float32(2.0), 3.0, gamma=0.5, alpha=2.0)) == 7.0


# ------------------------------------------------------------------------------ registry


NAMES = {"pdu", "pdu_entropy", "grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "undial", "ceu",
         "wga", "satimp"}  # fmt: skip


def test_registry_names_fields_and_defaults():
    assert set(methods.METHODS) == NAMES == set(methods.METHOD_DEFAULTS)
    for name, spec in methods.METHODS.items():
        assert spec.name == name and callable(spec.forget_fn)
        assert set(spec.forget_args) <= set(spec.defaults)
        assert spec.retain_loss in (None, *methods.RETAIN_INPUTS)
    d = methods.METHOD_DEFAULTS
    assert (d["npo"]["beta"], d["simnpo"]["beta"], d["simnpo"]["gamma"], d["simnpo"]["delta"]) == (
        0.1,
        4.5,
        0.125,
        0.0,
    )
    assert (d["satimp"]["beta1"], d["satimp"]["beta2"], d["satimp"]["gamma"], d["satimp"]["alpha"]) == (
        5.0,
        1.0,
        0.1,
        1.0,
    )
    assert (d["undial"]["beta"], d["undial"]["alpha"], d["rmu"]["steering_coeff"], d["rmu"]["layer"]) == (
        10.0,
        0.0,
        2.0,
        7,
    )
    assert d["pdu"]["gamma"] == 1.0 and not set(d["pdu"]) & set(dual.METHOD_ARG_ALIASES)  # dual: cfg.dual
    m = methods.METHODS
    assert m["idk_dpo"].needs_idk and not m["npo"].needs_idk
    assert m["rmu"].needs_hidden_layer == 7 and m["pdu"].needs_hidden_layer is None
    assert m["rmu"].retain_loss == "embed_diff" and m["grad_ascent"].retain_loss is None
    needs_ref = {n for n in NAMES if methods.requires_reference(n)}  # with the method's own retain loss
    assert needs_ref == {"npo", "idk_dpo", "rmu", "undial"}
    assert methods.requires_reference("grad_diff", "kl") and not methods.requires_reference("grad_diff")
    assert not methods.requires_reference("pdu") and methods.requires_reference("npo", None)


def test_resolve_makes_one_record_of_what_the_engine_reads():
    import ml_collections

    from cel_jax import config_base

    ga = methods.resolve_method("grad_ascent", solver="primal_dual")
    assert ga.retain_kind == "nll" and ga.streams == 2  # the constrained version bounds the retain NLL
    assert methods.resolve_method("grad_ascent").retain_kind is None  # scalarised: forget term only
    npo = methods.resolve_method("npo", {"beta": 0.5, "gamma": 2.0})
    assert dict(npo.forget_hp) == {"beta": 0.5} and npo.gamma == 2.0 and npo.reference == {"ref_forget_nll"}
    assert hash(npo) == hash(methods.resolve_method("npo", {"beta": 0.5, "gamma": 2.0}))  # a static spec
    assert methods.resolve_method("grad_diff", {"retain_loss": "kl"}).reference == {"ref_retain_logits"}
    idk = methods.resolve_method("idk_dpo")
    assert idk.needs_idk and idk.streams == 3 and idk.reference == {"ref_forget_nll", "ref_idk_nll"}
    rmu = methods.resolve_method("rmu", {"layer": 1, "steering_coeff": 3.0}, n_layers=2)
    assert rmu.hidden_layer == 1 and rmu.reference == {"ref_retain_hidden"} and not rmu.answer_row_parts
    want = methods.rmu_control_vector(jax.random.key(3 + 17), D, 3.0)  # the method's hook, from the seed
    np.testing.assert_array_equal(rmu.consts(3, D)["control_vec"], want)
    assert npo.consts(3, D) == {}
    with pytest.raises(ValueError, match="layer 2 outside the model's 2 layers"):
        methods.resolve_method("rmu", {"layer": 2}, n_layers=2)
    with pytest.raises(ValueError, match="unknown retain loss 'nope'"):
        methods.resolve_method("pdu", {"retain_loss": "nope"})
    c = config_base.unlearn_config()
    c.method, c.solver, c.method_args = "simnpo", "primal_dual", ml_collections.ConfigDict({"beta": 2.0})
    assert methods.resolve(c, n_layers=4) == methods.resolve_method(
        "simnpo", {"beta": 2.0}, solver="primal_dual"
    )
    assert methods.resolve(c, mode="finetune") is methods.FINETUNE


def test_unknown_names_and_inputs_raise():
    with pytest.raises(ValueError, match="valid names:.*'grad_ascent'"):
        methods.get_method("gradascent")
    with pytest.raises(ValueError, match="unknown unlearning method"):
        methods.forget_loss("nope", {})
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['betta'\]"):
        methods.resolve_hparams("npo", {"betta": 1.0})
    q = make_q(14)
    del q["ref_forget_nll"]
    with pytest.raises(ValueError, match=r"missing \['ref_forget_nll'\]"):
        methods.forget_loss("npo", q)


def test_forget_loss_dispatch_uses_defaults_and_overrides(monkeypatch):
    calls = []

    def spy(q, **kw):
        calls.append(kw)
        return jnp.float32(0.0), {}

    for name in ("simnpo", "pdu", "ceu"):
        monkeypatch.setitem(methods.METHODS, name, dataclasses.replace(methods.METHODS[name], forget_fn=spy))
    q = make_q(15)
    methods.forget_loss("simnpo", q)
    methods.forget_loss("simnpo", q, beta=0.5, gamma=3.0)  # gamma is the engine's weight, not passed on
    methods.forget_loss("pdu", q, compat=True, average="sequence")
    methods.forget_loss("ceu", q)
    assert calls == [
        dict(compat=False, beta=4.5, delta=0.0),
        dict(compat=False, beta=0.5, delta=0.0),
        dict(compat=True, shifted=True, average="sequence", tie="split"),
        dict(compat=False, ignore_first_n_answer_tokens=1),
    ]


def test_every_method_is_zero_with_zero_gradient_on_an_empty_batch():
    q = {k: jnp.asarray(v) for k, v in make_q(16).items()}
    q["forget_labels"] = jnp.full((B, T), IGNORE)
    q["idk_labels"] = jnp.full((B, T + 2), IGNORE)
    diff_keys = ("forget_logits", "forget_hidden", "idk_logits")

    def total(x, q):  # one program for all methods: the sum's gradient is NaN if any method's is
        values = {name: methods.forget_loss(name, {**q, **x})[0] for name in methods.METHODS}
        return sum(values.values()), values

    x = {k: q.pop(k) for k in diff_keys}
    (_, values), g = jit(jax.value_and_grad(total, has_aux=True))(x, q)
    assert set(values) == set(methods.METHODS)
    for name, value in values.items():
        assert float(value) == 0.0, name
    for k in diff_keys:
        assert bool(jnp.all(g[k] == 0)), k


# ------------------------------------------------------------------------------ idk answers


def test_idk_file():
    path = train_data.IDK_FILE
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(texts) >= 100
    assert all(isinstance(t, str) and t == t.strip() and t for t in texts)
    assert len(set(texts)) == len(texts)
