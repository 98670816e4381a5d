"""bench/throughput.py on a tiny model: the PyTorch baseline computes our Lagrangian (and steps like our
optimizer), eval parity, FLOP formula, agreement and FSDP byte counts by hand."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_model import make_tiny_model_dir

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import throughput as tp  # noqa: E402
from cel_jax import hf_io  # noqa: E402
from cel_jax.model import LlamaConfig  # noqa: E402

ROWS = [
    {"question": "Where was the painter born?", "answer": "The painter was born in a small harbour town."},
    {"question": "What did the author write?", "answer": "Three novels about lighthouses and clocks."},
    {"question": "Who was her father?", "answer": "Her father was a fisherman."},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tp") / "model", n_layers=1)  # fast compiles
    model, tok = hf_io.load_pretrained(str(folder))
    return folder, model, tok


def test_model_flops_closed_form():
    cfg = LlamaConfig.tiny()  # d=64, 2 layers, 4 heads of 16, vocab 256, tied
    f = tp.model_flops(cfg, n_rows=3, seq_len=8)
    n = 256 * 64 + 2 * (64 * 16 * (4 * 2 + 2 * 2) + 3 * 64 * 128 + 2 * 64) + 64
    assert f["n_params"] == n
    assert f["tokens"] == 24
    assert f["dense"] == 6 * n * 24
    assert f["attention"] == 12 * 2 * 8 * 64 * 24
    assert f["total"] == f["dense"] + f["attention"]
    with pytest.raises(ValueError, match="n_rows"):
        tp.model_flops(cfg, 0, 8)


def test_agreement_by_hand():
    a = tp.agreement([[1, 2, 3], [4, 5], [7]], [[1, 2, 3], [4, 6, 6], [7, 8]])
    assert a["exact"] == pytest.approx(1 / 3)
    assert a["token"] == pytest.approx((3 + 1 + 1) / (3 + 3 + 2))
    assert a["first_divergence"] == [None, 1, 1]
    with pytest.raises(ValueError):
        tp.agreement([[1]], [])


def test_torch_step_is_our_lagrangian(tiny):
    """Two lockstep steps from the same weights: equal Lagrangians (so equal losses, dual update, clip and
    AdamW), then PDU vs GradDiff on the same step machinery."""
    folder, model, tok = tiny
    batch = tp.train_batch(tok, ROWS, ROWS[::-1], batch=2, seq_len=128)
    assert batch["forget"]["input_ids"].shape == (1, 2, 128)
    assert (batch["forget"]["labels"][0, :, :3] == tp.IGNORE).all()  # prompt masked
    lam0, eps, dual_lr = 2.0, 3.0, 0.5
    copy = lambda: jax.tree.map(lambda x: x.copy(), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    # Each step donates its state: both get copies, so the shared fixture model stays alive.
    ours = tp.make_jax_step(
        model, "pdu", "primal_dual", batch, lam0=lam0, eps=eps, dual_lr=dual_lr, params=copy()
    )
    gd = tp.make_jax_step(model, "grad_diff", "scalarized", batch, eps=eps, params=copy())
    # our default runs the LM head on answer rows only; PyTorch below runs it on all 128 rows
    caps = dict(ours["spec"].answer_rows)
    assert set(caps) == {"forget", "retain"} and max(caps.values()) < 127
    assert (gd["spec"].method, gd["spec"].solver, gd["spec"].retain_kind) == (
        "grad_diff",
        "scalarized",
        "nll",
    )
    assert (ours["spec"].method, ours["spec"].solver) == ("pdu", "primal_dual")
    info = tp.compile_step(ours, batch)
    assert info["compile_s"] > 0 and info["xla_flops"] > 0
    tmodel, opt = tp.torch_setup(str(folder), threads=1)
    lam = lam0
    for _ in range(2):
        _, _, loss = tp.run_step(ours, batch)
        _, t_loss, lam, parts = tp.torch_pdu_step(tmodel, opt, batch, lam, eps, dual_lr)
        assert loss == pytest.approx(t_loss, rel=1e-4)
        assert float(ours["state"].dual) == pytest.approx(lam, rel=1e-5)
        assert set(parts) == {"forward_s", "backward_s", "optimizer_s"}


def test_eval_parity_and_generation(tiny):
    folder, model, tok = tiny
    items, prompts = tp.eval_items(tok, ROWS[:2])
    from cel_jax import data
    from cel_jax import generate as gen

    pad, eos = data.pad_id_of(tok), gen.eos_token_ids(model, tok)
    ours = tp.jax_eval(model, items, prompts, pad, eos, max_new_tokens=3)
    tmodel, _ = tp.torch_setup(str(folder), threads=1)
    t_avg, _ = tp.torch_forward_probs(tmodel, items, pad)
    t_ids, _ = tp.torch_generate(tmodel, prompts, eos, pad, max_new_tokens=3)
    np.testing.assert_allclose(ours["avg_loss"], t_avg, rtol=1e-4)
    assert tp.agreement(ours["ids"], t_ids)["exact"] == 1.0


def test_fsdp_bytes_per_device(tiny):
    folder, _, _ = tiny
    model, _ = hf_io.load_pretrained(str(folder), with_tokenizer=False)
    n = jax.device_count()  # 8 fake CPU devices (conftest)
    out = tp.fsdp_param_bytes(model, n)
    total = model.cfg.num_params * 4
    assert out["total_param_bytes"] == total
    assert set(out["replicated_per_device"].values()) == {total}
    # d_model 64 divides by 8: every matrix is sharded over "embed", only the norm scales replicate.
    norms = (2 * model.cfg.n_layers + 1) * model.cfg.d_model * 4
    assert out["replicated_bytes_under_fsdp"] == norms
    assert sum(out["fsdp_per_device"].values()) == (total - norms) + n * norms
    assert out["fsdp_max_per_device"] == (total - norms) // n + norms


def test_matmul_peak_and_loss_head():
    pk = tp.jax_matmul_peak((32,), reps=1)
    assert pk["peak"] > 0 and set(pk["gflops"]) == {"32"}
    h = tp.loss_head_times(batch=1, seq_len=4, vocab=8, reps=1)
    assert h["delta_s"] == pytest.approx(h["pdu_s"] - h["grad_diff_s"])


def test_answer_row_spec(tiny):
    _, model, tok = tiny
    batch = tp.train_batch(tok, ROWS, ROWS[::-1], batch=2, seq_len=128)
    st = tp.make_jax_step(model, "pdu", "primal_dual", batch, lm_head_rows="all", params={})
    assert st["spec"].answer_rows == ()
    spec = tp.answer_row_spec(st["spec"], batch, "answers")
    n = max(int((batch[p]["labels"][0, :, 1:] != tp.IGNORE).sum(-1).max()) for p in ("forget", "retain"))
    assert dict(spec.answer_rows)["forget"] >= n + 1


def test_breakdown_runs_on_the_compacted_batch(tiny):
    _, model, tok = tiny
    batch = tp.train_batch(tok, ROWS, ROWS[::-1], batch=2, seq_len=128)
    copy = jax.tree.map(lambda x: x.copy(), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    st = tp.make_jax_step(model, "pdu", "primal_dual", batch, params=copy)
    out = tp.jax_breakdown(st, batch, reps=1)
    assert out["forward_s"] > 0 and out["optimizer_s"] > 0
    assert all(not x.is_deleted() for x in jax.tree.leaves(st["state"]))  # the state itself is not donated
