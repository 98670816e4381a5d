"""The engine: dual rule in the logs, sharded == unsharded, resume == uninterrupted, compile counts,
bad input before compilation, every method runs."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import MUSE_FIXTURES
from tiny_model import make_tiny_model_dir

from cel_jax.training import checkpoint, train
from cel_jax.unlearning import methods
from cel_jax.unlearning import step as step_lib

ROOT = Path(__file__).resolve().parents[1]


def load_config(name="tiny"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def tiny_cfg(model_dir, **over):
    cfg = load_config()
    cfg.model.name_or_path = str(model_dir)
    cfg.ckpt.keep_final = True  # the tests read the final checkpoint (a finished run drops it by default)
    for k, v in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def rows(workdir):
    return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def check_dual_rule(log, eps, lr, lam_max=np.inf):
    for a, b in zip(log, log[1:], strict=False):
        assert b["dual"] == pytest.approx(a["dual_next"], abs=1e-6)
    for r in log:
        expect = (
            min(max(0.0, r["dual"] + lr * (r["retain_loss"] - eps)), lam_max)
            if r["dual_active"]
            else r["dual"]
        )
        assert r["dual_next"] == pytest.approx(expect, rel=1e-6, abs=1e-6)


def test_logged_dual_follows_the_projected_ascent_rule(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, max_steps=5)
    train.run(cfg, str(tmp_path))
    log = rows(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["dual_active"] for r in log] == [r["epoch"] >= 1 for r in log]  # warm start: epoch 0 holds λ0
    assert log[0]["dual"] == 1.0 and not log[0]["dual_active"] and log[-1]["dual_active"]
    check_dual_rule(log, eps=3.0, lr=0.5)
    assert log[-1]["dual_next"] > 1.0  # retain loss above ε pushes λ up
    for key in ("step", "epoch", "forget_loss", "retain_loss", "eps", "dual", "dual_next", "lr"):
        assert key in log[0]
    assert (tmp_path / "training_curves.png").exists() and (tmp_path / "summary.json").exists()


def test_microbatch_mode_updates_between_micro_batches(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, max_steps=4, **{"dual.mode": "microbatch", "dual.lam_max": 2.0})
    train.run(cfg, str(tmp_path))
    for r in rows(tmp_path):
        lams, lrs, valid = r["dual_micro"], r["retain_loss_micro"], r["valid_micro"]
        for m in range(len(lams)):
            nxt = lams[m + 1] if m + 1 < len(lams) else r["dual_next"]
            on = r["dual_active"] and valid[m] > 0  # filler micro-batches never move λ
            want = min(max(0.0, lams[m] + 0.5 * (lrs[m] - 3.0)), 2.0) if on else lams[m]
            assert nxt == pytest.approx(want, rel=1e-6)
    assert rows(tmp_path)[-1]["dual_next"] == pytest.approx(2.0)  # the upper bound binds


def test_sharded_run_equals_single_device(model_dir, tmp_path):
    train.run(tiny_cfg(model_dir, max_steps=4), str(tmp_path / "one"))
    train.run(tiny_cfg(model_dir, max_steps=4, **{"mesh.shape": (2, 2, 2)}), str(tmp_path / "eight"))
    a, b = rows(tmp_path / "one"), rows(tmp_path / "eight")
    for ra, rb in zip(a, b, strict=True):
        for k in ("forget_loss", "retain_loss", "dual", "dual_next", "loss"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-5, rel=1e-5), k


def test_lm_head_on_answer_rows_equals_all_rows(model_dir, tmp_path):
    """The default (LM head on answer-predicting rows only) runs the same optimisation as every row."""
    train.run(tiny_cfg(model_dir, max_steps=3), str(tmp_path / "answers"))
    train.run(tiny_cfg(model_dir, max_steps=3, lm_head_rows="all"), str(tmp_path / "all"))
    a, b = rows(tmp_path / "answers"), rows(tmp_path / "all")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for k in ("forget_loss", "retain_loss", "dual_next", "grad_norm"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-5, rel=1e-4), k


def _final_state(workdir, like_cfg=None):
    """The latest checkpoint's (step, state, meta), restored onto this process's first device."""
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(Path(workdir) / "ckpt")
    step = mgr.latest_step()
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = mgr.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), shapes)
    out = mgr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
    mgr.close()
    return step, out.state, out.meta


def test_sigkill_then_rerun_matches_uninterrupted(model_dir, tmp_path):
    cfg_args = [
        f"--config={ROOT / 'configs' / 'tiny.py'}",
        f"--config.model.name_or_path={model_dir}",
        "--config.max_steps=6",
        "--config.ckpt.every=2",
        "--config.ckpt.async_save=True",
    ]
    env = {**os.environ, "CEL_JAX_FAULT_AT_STEP": "4", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "cel_jax.cli.main", "unlearn", f"--workdir={tmp_path / 'killed'}", *cfg_args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]  # it really died by SIGKILL
    assert not (tmp_path / "killed" / "summary.json").exists()
    env.pop("CEL_JAX_FAULT_AT_STEP")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed from step" in p.stdout
    # The uninterrupted run is the same command in a fresh process (same devices, same compiled programs):
    # an in-process run sees this test process's 8 fake devices and may differ in the last float bits.
    straight = [c if not c.startswith("--workdir=") else f"--workdir={tmp_path / 'straight'}" for c in cmd]
    p = subprocess.run(straight, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    s1, a, _ = _final_state(tmp_path / "killed")
    s2, b, _ = _final_state(tmp_path / "straight")
    assert s1 == s2 == 6
    assert float(a["dual"]["lam"]) == pytest.approx(float(b["dual"]["lam"]), abs=1e-6)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert [r["step"] for r in rows(tmp_path / "killed")] == [1, 2, 3, 4, 5, 6]


def test_checkpoints_only_at_multiples_of_the_interval_and_at_the_end(model_dir, tmp_path):
    """Orbax alone also saves the first step of a run without a checkpoint (a whole state for nothing)."""
    from cel_jax.training import checkpoint

    train.run(tiny_cfg(model_dir, max_steps=5, **{"ckpt.every": 2, "ckpt.keep": 10}), str(tmp_path))
    assert checkpoint.finalized_steps(str(tmp_path)) == [2, 4, 5]


def test_restore_onto_another_mesh(model_dir, tmp_path):
    train.run(tiny_cfg(model_dir, max_steps=2, **{"ckpt.every": 2}), str(tmp_path / "run"))
    out = train.run(
        tiny_cfg(model_dir, max_steps=4, **{"mesh.shape": (2, 2, 2), "ckpt.every": 2}), str(tmp_path / "run")
    )
    assert out["summary"]["resumed_from"] == 2
    q = out["model"].layers[0].attn.q[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    train.run(tiny_cfg(model_dir, max_steps=4), str(tmp_path / "straight"))
    a, b = rows(tmp_path / "run"), rows(tmp_path / "straight")
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert ra["forget_loss"] == pytest.approx(rb["forget_loss"], abs=1e-5)
        assert ra["dual_next"] == pytest.approx(rb["dual_next"], abs=1e-5)


def test_relative_workdir_checkpoints_under_an_absolute_path(model_dir, tmp_path, monkeypatch):
    """Newer Orbax (0.12.4 on the GPU machine, see results/gpu/log_call2.txt) rejects relative checkpoint
    paths: a relative --workdir is resolved against the current directory and resumes from there."""
    assert (
        checkpoint._path("runs/x").is_absolute() and str(checkpoint._path("gs://b/run")) == "gs://b/run/ckpt"
    )
    monkeypatch.chdir(tmp_path)
    train.run(tiny_cfg(model_dir, max_steps=2, **{"ckpt.every": 2}), "rel")
    assert (tmp_path / "rel" / "ckpt" / "2").is_dir()
    out = train.run(tiny_cfg(model_dir, max_steps=3, **{"ckpt.every": 2}), "rel")
    assert out["summary"]["resumed_from"] == 2


def test_compiles_once_per_length_bucket(model_dir, tmp_path):
    before = step_lib.TRACE_COUNT["primal_dual"]
    cfg = tiny_cfg(model_dir, max_steps=9, epochs=3, **{"dual.lam0": 2.5})
    train.run(cfg, str(tmp_path))
    buckets = {r["seq_len"] for r in rows(tmp_path)}
    assert step_lib.TRACE_COUNT["primal_dual"] - before == len(buckets)
    assert len({r["dual"] for r in rows(tmp_path)}) > 1  # λ changed without recompiling


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"method": "forgetful"}, "unknown unlearning method"),
        ({"solver": "magic"}, "unknown solver"),
        ({"dual.eps": -1.0}, "eps"),
        ({"dual.lr": -1.0}, "dual.lr"),
        ({"dual.lam0": -2.0}, "lam0"),
        ({"dual.mode": "hourly"}, "dual.mode must be one of"),
        ({"data.forget_split": "forget99"}, "forget99"),
        ({"data.max_length": 16}, "exceeds max_length"),
        ({"data.forget_rows": "5:5"}, "selects no rows"),
        ({"batch_size": 3, "mesh.shape": (1, 2, 1)}, "multiple of the mesh"),
        ({"method_args": {"beta": 1.0}}, "unknown hyper-parameter"),
        ({"lm_head_rows": "some"}, "lm_head_rows must be one of"),
    ],
)
def test_bad_input_fails_before_compiling(model_dir, tmp_path, over, msg):
    before = sum(step_lib.TRACE_COUNT.values())
    cfg = tiny_cfg(model_dir)
    with cfg.unlocked():
        for k, v in over.items():
            node = cfg
            *path, last = k.split(".")
            for p in path:
                node = node[p]
            node[last] = v
    with pytest.raises((ValueError, FileNotFoundError), match=msg):
        train.run(cfg, str(tmp_path / "wd"))
    assert sum(step_lib.TRACE_COUNT.values()) == before
    assert not (tmp_path / "wd" / "ckpt").exists()


def test_vocabulary_mismatch_is_reported(tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    cfgj = json.loads((d / "config.json").read_text())
    cfgj["vocab_size"] = 64
    (d / "config.json").write_text(json.dumps(cfgj))
    with pytest.raises(ValueError, match="vocabulary"):
        train.run(tiny_cfg(d), str(tmp_path / "wd"))


def test_relative_eps_is_measured_on_the_reference_model(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, max_steps=1, **{"dual.eps": None, "dual.eps_alpha": 0.5})
    out = train.run(cfg, str(tmp_path))
    eps = out["summary"]["eps"]
    assert rows(tmp_path)[0]["eps"] == pytest.approx(eps)
    # the reference model's first retain losses sit near ε / 1.5
    assert eps / 1.5 == pytest.approx(rows(tmp_path)[0]["retain_loss"], rel=0.05)
    _, state, meta = _final_state(tmp_path, cfg)
    assert float(state["eps"]) == pytest.approx(eps) and meta["eps"] == pytest.approx(eps)


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_runs_and_decreases_its_objective(model_dir, tmp_path, method):
    over = {
        "method": method,
        "max_steps": 3,
        "epochs": 3,
        "grad_accum": 1,
        "shuffle": False,
        "data.forget_rows": "0:4",
        "data.retain_rows": "0:1",
        "dual.warmup_epochs": 100,
        "optim.lr": 3e-3,
        "ckpt.every": 100,
    }
    cfg = tiny_cfg(model_dir, **over)
    if method == "rmu":
        cfg.method_args = {"layer": 0}
    train.run(cfg, str(tmp_path))
    log = rows(tmp_path)
    losses_ = [r["loss"] for r in log]
    assert all(np.isfinite(losses_)), losses_
    assert losses_[-1] < losses_[0], (method, losses_)


def test_constrained_version_of_a_baseline_is_one_flag(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, method="npo", max_steps=3)
    assert cfg.solver == "primal_dual"
    train.run(cfg, str(tmp_path / "pd"))
    pd_rows = rows(tmp_path / "pd")
    check_dual_rule(pd_rows, eps=3.0, lr=0.5)
    for r in pd_rows:  # L_f + λ (L_r − ε), averaged over the step's micro-batches with λ fixed in the step
        assert r["loss"] == pytest.approx(r["forget_loss"] + r["dual"] * (r["retain_loss"] - 3.0), rel=1e-5)
    cfg = tiny_cfg(model_dir, method="npo", solver="scalarized", max_steps=3)
    train.run(cfg, str(tmp_path / "sc"))
    for r in rows(tmp_path / "sc"):  # NPO's reference weights: gamma = alpha = 1
        assert r["loss"] == pytest.approx(r["forget_loss"] + r["retain_loss"], rel=1e-5)


def test_finetune_reduces_loss(model_dir, tmp_path):
    cfg = load_config("tiny_finetune")
    cfg.model.name_or_path = str(model_dir)
    train.run(cfg, str(tmp_path), mode="finetune")
    log = rows(tmp_path)
    assert log[-1]["forget_loss"] < log[0]["forget_loss"]
    assert checkpoint  # module imported for the Orbax helpers above


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(args, port, extra_env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("CEL_JAX_")}
    procs = []
    for i in range(2):
        env = {
            **base,
            "JAX_PLATFORMS": "cpu",
            "CEL_JAX_COORDINATOR": f"127.0.0.1:{port}",
            "CEL_JAX_NUM_PROCESSES": "2",
            "CEL_JAX_PROCESS_ID": str(i),
            **(extra_env or {}),
        }
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=600) for p in procs]
    return [p.returncode for p in procs], outs


def test_two_processes_killed_and_resumed_equal_one_process(model_dir, tmp_path):
    """jax.distributed on localhost with CPU collectives: 2 processes x 1 device, SIGKILLed after the step-2
    checkpoint and relaunched, end where 1 process x 2 devices ends uninterrupted."""
    args = [
        sys.executable,
        "-m",
        "cel_jax.cli.main",
        "unlearn",
        f"--config={ROOT / 'configs' / 'tiny.py'}",
        f"--config.model.name_or_path={model_dir}",
        "--config.max_steps=4",
        "--config.mesh.shape=(1,2,1)",
        "--config.ckpt.every=2",
        "--config.export=True",
        f"--workdir={tmp_path / 'multi'}",
    ]
    codes, outs = _launch_two(args, _free_port(), {"CEL_JAX_FAULT_AT_STEP": "2"})
    assert codes == [-9, -9], [o[1][-2000:] for o in outs]
    codes, outs = _launch_two(args, _free_port())
    assert codes == [0, 0], [o[1][-3000:] for o in outs]
    assert all("resumed from step 2" in o[0] for o in outs)
    single = tiny_cfg(model_dir, max_steps=4, export=True, **{"mesh.shape": (1, 2, 1)})
    train.run(single, str(tmp_path / "single"))
    a, b = rows(tmp_path / "multi"), rows(tmp_path / "single")
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        for k in ("forget_loss", "retain_loss", "dual_next"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-5), k
    from safetensors.numpy import load_file  # the exported final models (process 0 gathered the shards)

    pa, pb = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("multi", "single"))
    assert set(pa) == set(pb)
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], atol=1e-6)
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("multi", "single"))
    assert sa["dual"] == pytest.approx(sb["dual"], abs=1e-6) and sa["resumed_from"] == 2


def test_epoch_mode_updates_lambda_once_per_epoch(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, max_steps=6, epochs=2, **{"dual.mode": "epoch", "dual.warmup_epochs": 1})
    train.run(cfg, str(tmp_path))
    log = rows(tmp_path)
    by_epoch = {}
    for r in log:
        assert r["dual_next"] == r["dual"]  # never inside a step
        by_epoch.setdefault(r["epoch"], set()).add(r["dual"])
    assert by_epoch[0] == {1.0} and len(by_epoch[1]) == 1
    assert by_epoch[1].pop() > 1.0  # retain loss (~6) above ε = 3 after epoch 0: λ rose once


def test_raw_text_unlearning_trains_on_pretraining_chunks(model_dir, tmp_path):
    """data.format="text" (MUSE): each split's texts joined and cut into max_length-token chunks, as
    OU's PretrainingDataset; PDU runs on raw/forget against raw/retain1."""
    from cel_jax import data

    over = {
        "data.source": str(MUSE_FIXTURES),
        "data.format": "text",
        "data.forget_split": "forget",
        "data.retain_split": "retain1",
        "data.max_length": 32,
        "max_steps": 2,
    }
    out = train.run(tiny_cfg(model_dir, **over), str(tmp_path))
    texts = {
        s: [json.loads(x)["text"] for x in (MUSE_FIXTURES / "raw" / f"{s}.jsonl").read_text().splitlines()]
        for s in ("forget", "retain1")
    }
    td, tok = out["data"], out["tokenizer"]
    for items, split in ((td.forget_items, "forget"), (td.retain_items, "retain1")):
        want = data.encode_pretraining(tok, texts[split], 32)
        assert [it["input_ids"] for it in items] == [it["input_ids"] for it in want]
        assert len(items) > 1 and all(len(it["input_ids"]) <= 33 for it in items)  # BOS + a chunk
    log = rows(tmp_path)
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["retain_loss"]) for r in log)
    with pytest.raises(ValueError, match="data.format must be one of"):
        train.run(tiny_cfg(model_dir, **{**over, "data.format": "chunks"}), str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="data.format='text' has none"):
        train.run(tiny_cfg(model_dir, method="idk_dpo", **over), str(tmp_path / "idk"))


@pytest.mark.parametrize("corpus, eps", [("news", 1.5), ("books", 0.1)])
def test_muse_config_unlearns_raw_text_with_the_authors_settings(corpus, eps):
    from cel_jax.training import checks

    spec = importlib.util.spec_from_file_location("muse_cfg", ROOT / "configs" / "muse_llama2_7b.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config(corpus)
    checks.validate_config(cfg, "unlearn")
    assert (cfg.data.format, cfg.data.text_config) == ("text", "raw")
    assert (cfg.data.forget_split, cfg.data.retain_split, cfg.data.max_length) == ("forget", "retain1", 2048)
    assert (cfg.dual.rule, cfg.dual.lam0, cfg.dual.lr, cfg.dual.eps) == ("gda", 50.0, 1.0, eps)
