"""bench/throughput/ on a tiny model: the PyTorch baseline computes our Lagrangian (and steps like our
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

from bench.throughput import cli, fsdp, jax_measure, jax_step, report, runner, workload  # noqa: E402
from bench.throughput import device as dev  # noqa: E402
from bench.throughput import torch_reference as tref  # noqa: E402
from bench.throughput.common import IGNORE  # noqa: E402
from cel_jax.model import LlamaConfig, hf_io  # noqa: E402

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
    f = workload.model_flops(cfg, n_rows=3, seq_len=8)
    n = 256 * 64 + 2 * (64 * 16 * (4 * 2 + 2 * 2) + 3 * 64 * 128 + 2 * 64) + 64
    assert f["n_params"] == n
    assert f["tokens"] == 24
    assert f["dense"] == 6 * n * 24
    assert f["attention"] == 12 * 2 * 8 * 64 * 24
    assert f["total"] == f["dense"] + f["attention"]
    with pytest.raises(ValueError, match="n_rows"):
        workload.model_flops(cfg, 0, 8)


def test_agreement_by_hand():
    a = workload.agreement([[1, 2, 3], [4, 5], [7]], [[1, 2, 3], [4, 6, 6], [7, 8]])
    assert a["exact"] == pytest.approx(1 / 3)
    assert a["token"] == pytest.approx((3 + 1 + 1) / (3 + 3 + 2))
    assert a["first_divergence"] == [None, 1, 1]
    with pytest.raises(ValueError):
        workload.agreement([[1]], [])


def test_torch_step_is_our_lagrangian(tiny):
    """Two lockstep steps from the same weights: equal Lagrangians (so equal losses, dual update, clip and
    AdamW), then PDU vs GradDiff on the same step machinery."""
    folder, model, tok = tiny
    batch = workload.train_batch(tok, ROWS, ROWS[::-1], batch=2, seq_len=128)
    assert batch["forget"]["input_ids"].shape == (1, 2, 128)
    assert (batch["forget"]["labels"][0, :, :3] == IGNORE).all()  # prompt masked
    lam0, eps, dual_lr = 2.0, 3.0, 0.5
    copy = lambda: jax.tree.map(lambda x: x.copy(), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    # Each step donates its state: both get copies, so the shared fixture model stays alive.
    ours = jax_step.make_jax_step(
        model, "pdu", "primal_dual", batch, lam0=lam0, eps=eps, dual_lr=dual_lr, params=copy()
    )
    gd = jax_step.make_jax_step(model, "grad_diff", "scalarized", batch, eps=eps, params=copy())
    # our default runs the LM head on answer rows only; PyTorch below runs it on all 128 rows
    caps = dict(ours["spec"].answer_rows)
    assert set(caps) == {"forget", "retain"} and max(caps.values()) < 127
    assert (gd["spec"].method, gd["spec"].solver, gd["spec"].resolved.retain_kind) == (
        "grad_diff",
        "scalarized",
        "nll",
    )
    assert (ours["spec"].method, ours["spec"].solver) == ("pdu", "primal_dual")
    info = jax_step.compile_step(ours, batch)
    assert info["compile_s"] > 0 and info["xla_flops"] > 0
    tmodel, opt = tref.torch_setup(str(folder), threads=1)
    lam = lam0
    for _ in range(2):
        _, _, loss = jax_step.run_step(ours, batch)
        _, t_loss, lam, parts = tref.torch_pdu_step(tmodel, opt, batch, lam, eps, dual_lr)
        assert loss == pytest.approx(t_loss, rel=1e-4)
        assert float(ours["state"].dual.lam) == pytest.approx(lam, rel=1e-5)
        assert set(parts) == {"forward_s", "backward_s", "optimizer_s"}


def test_eval_parity_and_generation(tiny):
    folder, model, tok = tiny
    items, prompts = workload.eval_items(tok, ROWS[:2])
    from cel_jax import data
    from cel_jax.evaluation import generate as gen

    pad, eos = data.pad_id_of(tok), gen.eos_token_ids(model, tok)
    ours = jax_measure.jax_eval(model, items, prompts, pad, eos, max_new_tokens=3)
    tmodel, _ = tref.torch_setup(str(folder), threads=1)
    t_avg, _ = tref.torch_forward_probs(tmodel, items, pad)
    t_ids, _ = tref.torch_generate(tmodel, prompts, eos, pad, max_new_tokens=3)
    np.testing.assert_allclose(ours["avg_loss"], t_avg, rtol=1e-4)
    assert workload.agreement(ours["ids"], t_ids)["exact"] == 1.0


def test_fsdp_bytes_per_device(tiny):
    folder, _, _ = tiny
    model, _ = hf_io.load_pretrained(str(folder), with_tokenizer=False)
    n = jax.device_count()  # 8 fake CPU devices (conftest)
    out = fsdp.fsdp_param_bytes(model, n)
    total = model.cfg.num_params * 4
    assert out["total_param_bytes"] == total
    assert set(out["replicated_per_device"].values()) == {total}
    # d_model 64 divides by 8: every matrix is sharded over "embed", only the norm scales replicate.
    norms = (2 * model.cfg.n_layers + 1) * model.cfg.d_model * 4
    assert out["replicated_bytes_under_fsdp"] == norms
    assert sum(out["fsdp_per_device"].values()) == (total - norms) + n * norms
    assert out["fsdp_max_per_device"] == (total - norms) // n + norms


def test_matmul_peak_and_loss_head():
    pk = jax_measure.jax_matmul_peak((32,), reps=1)
    assert pk["peak"] > 0 and set(pk["gflops"]) == {"32"}
    h = jax_measure.loss_head_times(batch=1, seq_len=4, vocab=8, reps=1)
    assert h["delta_s"] == pytest.approx(h["pdu_s"] - h["grad_diff_s"])


def test_answer_row_plan_follows_lm_head_rows(tiny):
    _, model, tok = tiny
    batch = workload.train_batch(tok, ROWS, ROWS[::-1], batch=2, seq_len=128)
    st = jax_step.make_jax_step(model, "pdu", "primal_dual", batch, lm_head_rows="all", params={})
    assert st["spec"].answer_rows == ()
    spec = jax_step.make_jax_step(model, "pdu", "primal_dual", batch, params={})["spec"]  # answers: default
    n = max(int((batch[p]["labels"][0, :, 1:] != IGNORE).sum(-1).max()) for p in ("forget", "retain"))
    assert dict(spec.answer_rows)["forget"] >= n + 1


def test_breakdown_runs_on_the_compacted_batch(tiny):
    _, model, tok = tiny
    batch = workload.train_batch(tok, ROWS, ROWS[::-1], batch=2, seq_len=128)
    copy = jax.tree.map(lambda x: x.copy(), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    st = jax_step.make_jax_step(model, "pdu", "primal_dual", batch, params=copy)
    out = jax_measure.jax_breakdown(st, batch, reps=1)
    assert out["forward_s"] > 0 and out["optimizer_s"] > 0
    assert all(not x.is_deleted() for x in jax.tree.leaves(st["state"]))  # the state itself is not donated


# ---------------------------------------------------------------------------------- --device / --dtype
def test_resolve_device_and_env():
    assert dev.resolve_device("auto", "gpu") == "gpu"
    assert dev.resolve_device("auto", "cpu") == "cpu"
    assert dev.resolve_device("gpu", "gpu") == "gpu"
    assert dev.resolve_device("cpu", "cpu") == "cpu"
    with pytest.raises(ValueError, match="default backend is 'cpu'"):
        dev.resolve_device("gpu", "cpu")
    with pytest.raises(ValueError, match="JAX_PLATFORMS=cpu"):
        dev.resolve_device("cpu", "gpu")
    with pytest.raises(ValueError, match="device must be"):
        dev.resolve_device("tpu", "cpu")
    assert {k: dev.TORCH_DEVICE[dev.resolve_device("auto", b)] for k, b in (("g", "gpu"), ("c", "cpu"))} == {
        "g": "cuda",
        "c": "cpu",
    }
    env: dict[str, str] = {}
    dev.prepare_jax_env("cpu", env)
    assert env == {"JAX_PLATFORMS": "cpu"}
    env = {}
    dev.prepare_jax_env("auto", env)
    assert env == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
    dev.prepare_jax_env("gpu", env)  # an explicit setting wins
    assert env == {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}


def test_mm_sizes_precision_and_parity():
    assert dev.mm_sizes_for("cpu", None) == [1024, 2048]
    assert dev.mm_sizes_for("gpu", None) == [4096, 8192]
    assert dev.mm_sizes_for("gpu", [64]) == [64]
    with pytest.raises(ValueError, match="mm-sizes"):
        dev.mm_sizes_for("cpu", [0])
    p = dev.precision_recipe("bfloat16", "gpu")
    assert p["short"] == "bf16" and "torch.autocast('cuda', torch.bfloat16)" in p["torch"]
    assert "param_dtype=float32" in p["ours"] and "fp32 AdamW" in p["torch"]
    assert "torch.autocast('cpu'" in dev.precision_recipe("bfloat16", "cpu")["torch"]
    assert dev.precision_recipe("float32", "cpu")["short"] == "fp32"
    assert "TF32" in dev.precision_recipe("float32", "gpu")["ours"]
    with pytest.raises(ValueError, match="dtype"):
        dev.precision_recipe("float16", "cpu")
    # the same differences: outside the fp32 thresholds, within the bf16 ones
    args = (5e-3, [100.0, 90.0], [100.2, 90.1], 2e-2)
    f32, b16 = dev.parity_report("float32", *args), dev.parity_report("bfloat16", *args)
    assert f32["value"]["lockstep_loss_rel"] == pytest.approx(0.2 / 100.2)
    assert f32["within"] == {"first_loss_rel": False, "lockstep_loss_rel": False, "avg_nll_abs": False}
    assert b16["within"] == {"first_loss_rel": True, "lockstep_loss_rel": True, "avg_nll_abs": True}
    assert dev.parity_report("bfloat16", 0.0, [], [], 0.0)["within"]["lockstep_loss_rel"] is None


def test_fsdp_child_env_forces_cpu_and_device_count():
    env = fsdp.fsdp_child_env({"XLA_FLAGS": "--foo=1 --xla_force_host_platform_device_count=2"}, 8)
    assert env["JAX_PLATFORMS"] == "cpu"
    assert env["XLA_FLAGS"].split() == ["--foo=1", "--xla_force_host_platform_device_count=8"]
    assert fsdp.fsdp_child_env({}, 4)["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


def test_parser_flags_and_validation():
    p = cli.build_parser()
    a = p.parse_args([])
    assert (a.device, a.dtype, a.mm_sizes, a.batch, a.seq) == ("auto", "float32", None, 2, 128)
    for bad in (["--dtype", "float16"], ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    cli.validate_args(a)
    for bad in (["--batch", "0"], ["--mm-sizes", "0"], ["--torch-threads", "-1"]):
        with pytest.raises(ValueError):
            cli.validate_args(p.parse_args(bad))
    g = p.parse_args(["--device", "gpu", "--dtype", "bfloat16", "--batch", "16"])
    cmd = cli.command_line(g)
    assert "--device gpu" in cmd and "--dtype bfloat16" in cmd and "--batch 16" in cmd
    assert "--mm-sizes" not in cli.command_line(a)


def _fake_results(device: str, dtype: str) -> dict:
    """A results dict shaped as run() writes it (numbers made up), for the markdown renderer."""
    gpu = device == "gpu"
    peak = {"gflops": {"8192": 7e5}, "peak": 7e5}
    res = {
        "command": "python -m bench.throughput",
        "loadavg_start": [0.1, 0.1, 0.1],
        "loadavg_end": [0.2, 0.1, 0.1],
        "args": vars(cli.build_parser().parse_args(["--device", device, "--dtype", dtype])),
        "device": device,
        "dtype": dtype,
        "torch_device": dev.TORCH_DEVICE[device],
        "mm_sizes": dev.mm_sizes_for(device, None),
        "mm_inner": dev.MM_INNER[device],
        "precision": dev.precision_recipe(dtype, device),
        "skipped": {"omp_compare": dev.CPU_ONLY_REASON} if gpu else {},
        "machine": {
            "cpu": "Some CPU",
            "cores": 16,
            "memory_gb": 128.0,
            "xla_flags": "",
            "jax_device_kind": "NVIDIA H200" if gpu else "cpu",
            "xla_python_client_preallocate": "false",
            "versions": {"jax": "0.11.2", "flax": "0.12.8", "torch": "2.11.0", "transformers": "5.17.0"},
        },
        "torch_info": {
            "torch_threads": 16,
            "omp_wait_policy": "PASSIVE",
            "attn_implementation": "sdpa",
            "cuda_device_name": "NVIDIA H200" if gpu else None,
            "cuda_version": "13.0" if gpu else None,
        },
        "wall_s": 120.0,
        "shapes": {"M": 1, "B_forget": 16, "B_retain": 16, "T": 256, "tokens": 8192},
        "flops_formula": "f",
        "flops": {
            "n_params": 134_515_008,
            "tokens": 8192,
            "dense": 6.6e12,
            "attention": 1e11,
            "total": 6.7e12,
        },
        "compile": {
            k: {"trace_lower_s": 1.0, "compile_s": 20.0, "xla_flops": 6e12} for k in ("pdu", "grad_diff")
        },
        "warmup": {
            "pdu_first_step_s": 2.0,
            "pdu_first_loss": 500.0,
            "torch_first_step_s": 1.0,
            "torch_first_loss": 501.0,
            "first_loss_rel_diff": 2e-3,
        },
        "steps": {
            "samples_s": {
                "pdu": [0.05],
                "grad_diff": [0.05],
                "torch": [0.1],
                "pdu_dispatch": [0.001],
                "loadavg": [0.1],
                "torch_parts": [],
                "losses_pdu": [450.0],
                "losses_torch": [451.0],
            },
            "median_s": {"pdu": 0.05, "grad_diff": 0.05, "torch": 0.1},
            "tokens_per_s": {"pdu": 1.6e5, "grad_diff": 1.6e5, "torch": 8e4},
            "speedup_pdu_vs_torch": 2.0,
            "pdu_over_graddiff": 1.0,
            "pdu_over_graddiff_paired": 1.0,
            "torch_parts_median_s": {"forward_s": 0.03, "backward_s": 0.05, "optimizer_s": 0.02},
            "loss_head": {
                "pdu_s": 0.001,
                "grad_diff_s": 0.001,
                "delta_s": 0.0,
                "estimated_ratio": 1.0,
                "xla_flops_ratio": 1.0,
            },
        },
        "matmul_peak_gflops": {
            "jax": {"best": 7e5, "median": 6.9e5},
            "torch": {"best": 7.1e5, "median": 7e5},
            "samples": {"jax": [peak], "torch": [peak]},
        },
        "mfu": {
            "achieved_gflops_pdu": 1.3e5,
            "achieved_gflops_torch": 6.7e4,
            "fraction_of_best_peak": 0.19,
            "fraction_of_median_peak": 0.19,
            "torch_fraction_of_torch_best_peak": 0.09,
            "xla_cost_analysis_flops": 6e12,
        },
        "eval": {
            "items": 40,
            "max_new_tokens": 64,
            "first_call_s": {
                "ours_forward_s": 5.0,
                "ours_generate_s": 9.0,
                "torch_forward_s": 1.0,
                "torch_generate_s": 2.0,
            },
            "median_s": {
                "ours_forward": 0.01,
                "ours_generate": 0.2,
                "torch_forward": 0.02,
                "torch_generate": 1.5,
            },
            "speedup_forward": 2.0,
            "speedup_generate": 7.5,
            "speedup_total": 7.2,
            "generated_tokens_ours": 2000,
            "generated_tokens_torch": 2010,
            "agreement": {"exact": 0.5, "token": 0.8, "first_divergence": [None, 7]},
            "max_abs_avg_loss_diff": 0.02,
        },
        "memory_mb": {
            "ours_phases": {"model_loaded": 3000, "imports_and_tokenizer": 900},
            "ours_peak_through_eval": 3100,
            "ours_peak_one_training_state": 3200,
            "ours_peak_end": 3300,
            "torch_after_load": 1500,
            "torch_peak_through_eval": 1600,
            "torch_peak_training": 1700,
        },
    }
    if gpu:
        res["device_memory_mb"] = {
            "ours_phases": {
                "model_loaded": {"peak_mb": 600.0},
                "after_eval": {"peak_mb": 2000.0},
                "after_pdu_warmup": {"peak_mb": 9000.0},
                "end": None,
            },
            "torch_after_load": 540.0,
            "torch_peak_through_eval": 3000.0,
            "torch_peak": 12000.0,
            "torch_peak_reserved": 14000.0,
        }
    res["parity"] = dev.parity_report(dtype, 2e-3, [450.0], [451.0], 0.02)
    res["goals"] = runner.goal_table(res)
    return res


def test_markdown_gpu_bf16_and_cpu_fp32():
    md = report.markdown(_fake_results("gpu", "bfloat16"))
    assert md.startswith("# Throughput: cel_jax vs PyTorch/transformers (GPU: NVIDIA H200, bfloat16)")
    for s in (
        "(3) model FLOP/s / bf16 matmul peak (best)",
        "bf16 matmul peak (jitted jnp.matmul on the GPU, square sizes [4096, 8192]",
        "10 back-to-back matmuls per timing",
        "torch.autocast('cuda', torch.bfloat16)",
        "Peak GPU memory",
        "| ours (JAX peak_bytes_in_use) | 600 | 2000 | 9000 | n/a (+ the GradDiff state) |",
        "Skipped here: `omp_compare`",
        "Parity against the bfloat16 thresholds (reported, not asserted): first-step loss (relative) 2.0e-03 "
        "vs 3e-02: within",
        "mean answer NLL (max absolute) 2.0e-02 vs 5e-02: within",
    ):
        assert s in md, s
    assert "2 cores" not in md and "OMP_WAIT_POLICY PASSIVE" not in md
    assert runner.goal_table(_fake_results("gpu", "bfloat16"))[0]["value"] == 2.0
    cpu = _fake_results("cpu", "float32")
    md = report.markdown(cpu)
    assert md.startswith("# Throughput: cel_jax vs PyTorch/transformers (CPU)\n")
    assert "fp32 on both sides." in md and "(3) model FLOP/s / fp32 matmul peak (best)" in md
    assert "fp32 matmul peak (jitted jnp.matmul, square sizes [1024, 2048], best of 3 per size," in md
    assert "Peak GPU memory" not in md and "Skipped here" not in md
    assert "first-step loss (relative) 2.0e-03 vs 1e-04: OUTSIDE" in md
    for k in ("device", "dtype", "mm_sizes", "mm_inner", "precision", "skipped", "parity"):  # older results
        cpu.pop(k)
    assert "fp32 matmul peak" in report.markdown(cpu)


# ---------------------------------------------------------------------------------- bf16 on the CPU
def test_matmul_peaks_in_compute_dtype():
    pk = jax_measure.jax_matmul_peak((32,), reps=1, dtype="bfloat16", inner=2)
    assert pk["peak"] > 0 and (pk["dtype"], pk["inner"]) == ("bfloat16", 2)
    tk = tref.torch_matmul_peak((32,), reps=1, dtype="bfloat16", inner=2)
    assert tk["peak"] > 0 and tk["dtype"] == "bfloat16"
    assert isinstance(tref.torch_autocast("cpu", "bfloat16"), torch.autocast)
    with pytest.raises(ValueError):
        tref.torch_autocast("cpu", "float16")


def test_bf16_step_and_eval_parity(tiny):
    """Mixed precision on both sides (ours model.dtype=bfloat16, PyTorch autocast): the Lagrangian and the
    answer NLLs agree within the bf16 thresholds, and PyTorch's weights and moments stay fp32."""
    folder, _, tok = tiny
    model, _ = hf_io.load_pretrained(str(folder), dtype="bfloat16", with_tokenizer=False)
    assert model.cfg.dtype == "bfloat16" and model.embed.dtype == np.float32
    batch = workload.train_batch(tok, ROWS, ROWS[::-1], batch=2, seq_len=128)
    copy = jax.tree.map(lambda x: x.copy(), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    ours = jax_step.make_jax_step(
        model, "pdu", "primal_dual", batch, lam0=2.0, eps=3.0, dual_lr=0.5, params=copy
    )
    jax_step.compile_step(ours, batch)
    _, _, loss = jax_step.run_step(ours, batch)
    tmodel, opt = tref.torch_setup(str(folder), threads=1)
    _, t_loss, _, _ = tref.torch_pdu_step(tmodel, opt, batch, 2.0, 3.0, 0.5, dtype="bfloat16")
    tol = dev.PARITY_TOL["bfloat16"]
    assert abs(loss - t_loss) / abs(t_loss) <= tol["first_loss_rel"]
    assert {p.dtype for p in tmodel.parameters()} == {torch.float32}
    assert {s["exp_avg"].dtype for s in opt.state.values()} == {torch.float32}
    items, _ = workload.eval_items(tok, ROWS[:2])
    from cel_jax import data

    pad = data.pad_id_of(tok)
    from cel_jax.evaluation import forward

    o_avg = [s["avg_loss"] for s in forward.item_stats(model, items, pad, batch_size=2, progress=False)]
    t_avg, _ = tref.torch_forward_probs(tmodel, items, pad, dtype="bfloat16")
    assert np.max(np.abs(np.asarray(o_avg) - np.asarray(t_avg))) <= tol["avg_nll_abs"]


def test_fsdp_subprocess_is_cpu_with_its_own_device_count(tiny):
    folder, model, _ = tiny
    out = fsdp.run_fsdp_subprocess(str(folder), 4)  # the test process has 8 CPU devices; the child 4
    assert "error" not in out, out.get("error")
    assert out["devices"] == 4 and out["total_param_bytes"] == model.cfg.num_params * 4


def test_interleaved_alternates_and_keeps_first_outputs():
    from bench.interleave import interleaved

    calls: list[str] = []

    def fn(name):
        calls.append(name)
        return name.upper()

    r = interleaved({"a": lambda: fn("a"), "b": lambda: fn("b")}, reps=2)
    assert calls == ["a", "b", "a", "b", "b", "a"]  # first calls, then rounds in alternating order
    assert r["outputs"] == {"a": "A", "b": "B"}
    assert [len(v) for v in r["times_s"].values()] == [2, 2] and set(r["median_s"]) == {"a", "b"}
