"""Safe reruns (issue 18): a work dir remembers its run's config; the same config resumes, another one is
refused (or resumed / restarted when asked); a failed checkpoint write (disk full) stops the run with one
error, keeps the previous checkpoint and a rerun resumes from it to the uninterrupted result."""

import errno
import json
import logging
import os
import re
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from test_train import tiny_cfg
from tiny_model import make_tiny_model_dir

from cel_jax import errors
from cel_jax.model import hf_io
from cel_jax.training import checkpoint, run_dir, train
from cel_jax.unlearning import step as step_lib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def files(d: Path) -> dict:
    """{relative path: (bytes, mtime_ns)} of every file under d."""
    return {
        str(f.relative_to(d)): (f.read_bytes(), f.stat().st_mtime_ns)
        for f in sorted(d.rglob("*"))
        if f.is_file()
    }


def params_of(out) -> list:
    _, state = nnx.split(out["model"], nnx.Param)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(state))]


# --------------------------------------------------------------------------------------- the record
def test_compare_ignores_keys_that_do_not_change_the_computation(model_dir):
    a = run_dir.snapshot(tiny_cfg(model_dir), "unlearn")
    harmless = {"max_steps": 9, "ckpt.every": 7, "ckpt.keep": 5, "mesh.shape": (2, 2, 2), "export": True}
    assert run_dir.compare(a, run_dir.snapshot(tiny_cfg(model_dir, **harmless), "unlearn")) == []
    b = run_dir.snapshot(tiny_cfg(model_dir, **{"optim.lr": 1e-2, "epochs": 4}), "finetune")
    assert run_dir.compare(a, b) == [
        ("epochs", 3, 4),
        ("mode", "unlearn", "finetune"),
        ("optim.lr", 1e-3, 1e-2),
    ]
    assert run_dir.describe(run_dir.compare(a, b)) == (
        'epochs 3 → 4, mode "unlearn" → "finetune", optim.lr 0.001 → 0.01'
    )


def test_same_config_resumes_and_the_record_follows_max_steps(model_dir, tmp_path):
    train.run(tiny_cfg(model_dir, max_steps=2), str(tmp_path))
    rec = json.loads((tmp_path / "run_config.json").read_text())
    assert (
        rec["mode"] == "unlearn" and rec["config"]["optim"]["lr"] == 1e-3 and rec["config"]["max_steps"] == 2
    )
    out = train.run(tiny_cfg(model_dir, max_steps=3), str(tmp_path))  # continuing past max_steps is allowed
    assert out["summary"]["resumed_from"] == 2 and out["summary"]["steps"] == 3
    assert json.loads((tmp_path / "run_config.json").read_text())["config"]["max_steps"] == 3
    assert not (tmp_path / "run_config.prev.json").exists()


def _must_not_load(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(hf_io, "resolve", fail)
    monkeypatch.setattr(hf_io, "load_pretrained", fail)


def test_changed_config_is_refused_untouched_then_force_resumes_it(model_dir, tmp_path, monkeypatch):
    train.run(tiny_cfg(model_dir, max_steps=2, export=True), str(tmp_path))
    before, record = files(tmp_path / "model"), (tmp_path / "run_config.json").read_text()
    steps = checkpoint.finalized_steps(str(tmp_path))
    traces = sum(step_lib.TRACE_COUNT.values())
    changed = {"max_steps": 4, "export": True, "optim.lr": 1e-2, "epochs": 4}
    with monkeypatch.context() as m:
        _must_not_load(m)
        with pytest.raises(ValueError) as e:
            train.run(tiny_cfg(model_dir, **changed), str(tmp_path))
    msg = str(e.value)
    assert "holds a run with another config (checkpoint at step 2)" in msg
    assert "epochs 3 → 4" in msg and "optim.lr 0.001 → 0.01" in msg and "max_steps" not in msg
    assert "--config.resume=force" in msg and "--config.resume=restart" in msg and "\n" not in msg
    assert files(tmp_path / "model") == before  # the exported model: same bytes, not rewritten
    assert (tmp_path / "run_config.json").read_text() == record
    assert checkpoint.finalized_steps(str(tmp_path)) == steps and steps[-1] == 2
    assert sum(step_lib.TRACE_COUNT.values()) == traces

    out = train.run(tiny_cfg(model_dir, resume="force", **changed), str(tmp_path))
    assert out["summary"]["resumed_from"] == 2 and out["summary"]["steps"] == 4
    assert json.loads((tmp_path / "run_config.prev.json").read_text()) == json.loads(record)
    assert json.loads((tmp_path / "run_config.json").read_text())["config"]["optim"]["lr"] == 1e-2
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(1e-3) and lrs[2] > 2 * lrs[0]  # the new lr from step 3


def test_restart_starts_over_once_and_spares_an_exported_model(model_dir, tmp_path, monkeypatch):
    train.run(tiny_cfg(model_dir, max_steps=2), str(tmp_path))
    out = train.run(tiny_cfg(model_dir, max_steps=2, seed=1, resume="restart"), str(tmp_path))
    assert out["summary"]["resumed_from"] == 0 and out["summary"]["steps"] == 2
    assert json.loads((tmp_path / "run_config.prev.json").read_text())["config"]["seed"] == 0
    # the same restart command again (a requeued job) resumes the restarted run
    assert (
        run_dir.check(str(tmp_path), tiny_cfg(model_dir, seed=1, resume="restart"), "unlearn").action
        == "resume"
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with monkeypatch.context() as m, pytest.raises(ValueError, match="move or delete that folder first"):
        _must_not_load(m)
        train.run(tiny_cfg(model_dir, max_steps=2, seed=2, resume="restart"), str(tmp_path))
    assert checkpoint.finalized_steps(str(tmp_path))[-1] == 2


def test_save_final_off_leaves_no_end_checkpoint(model_dir, tmp_path):
    """The target stage's switch: no checkpoint at the end (only the export); the default keeps one."""
    over = {"max_steps": 2, "ckpt.every": 10**9, "export": True}
    train.run(tiny_cfg(model_dir, **over), str(tmp_path / "on"))
    out = train.run(tiny_cfg(model_dir, **over, **{"ckpt.save_final": False}), str(tmp_path / "off"))
    assert checkpoint.finalized_steps(str(tmp_path / "on")) == [2]
    assert checkpoint.finalized_steps(str(tmp_path / "off")) == [] and out["summary"]["steps"] == 2
    assert (tmp_path / "off" / "model" / "config.json").exists()


def test_exported_model_without_checkpoint_is_refused(model_dir, tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")
    _must_not_load(monkeypatch)
    for resume in ("auto", "force", "restart"):
        with pytest.raises(ValueError, match=r"holds an exported model .* and no checkpoint to resume") as e:
            train.run(tiny_cfg(model_dir, resume=resume), str(tmp_path))
        assert "choose a new --workdir" in str(e.value)
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"weights"
    with pytest.raises(ValueError, match="resume must be one of"):
        train.run(tiny_cfg(model_dir, resume="sometimes"), str(tmp_path / "other"))


# --------------------------------------------------------------------------------------- disk full
def test_tensorstore_errors_read_as_write_failures():
    real = (
        'RESOURCE_EXHAUSTED: Error writing "opt_state.1.0.nu.final_norm.scale/0" in OCDBT database at local '
        'file "/x/ckpt/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: '
        "\"/x/d/7ae0\": Failed to write 10664 bytes to file 4: No space left on device [os_error_code='28']"
    )  # what Orbax raised on a full tmpfs
    assert checkpoint.write_failure(ValueError(real)) == "no space left on device"
    assert (
        checkpoint.write_failure(OSError(errno.ENOSPC, "No space left on device"))
        == "no space left on device"
    )
    assert checkpoint.write_failure(PermissionError(errno.EACCES, "Permission denied")) == "permission denied"
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert checkpoint.write_failure(outer) == "disk quota exceeded"
    assert checkpoint.write_failure(ValueError("tree structures differ")) is None


def test_sibling_writes_into_the_abandoned_step_are_not_echoed():
    """After a failed write the manager removes the step's temporary folder; the other array writes of
    that step then fail with NOT_FOUND, and asyncio logs each abandoned task when it is collected (in CI,
    during the next test). Those records are dropped; other errors, and NOT_FOUND elsewhere, are not."""
    sibling = (
        'NOT_FOUND: Error writing "rng/0" in OCDBT database at local file "/x/ckpt/4.orbax-checkpoint-tmp/'
        'state.orbax-checkpoint-tmp/ocdbt.process_0/": Error reading Byte range [205590, 207235) of local '
        'file "/x/ckpt/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/89cd"'
    )  # what CI logged as "Task exception was never retrieved"

    def kept(exc):
        record = logging.LogRecord(
            "asyncio",
            logging.ERROR,
            __file__,
            1,
            "Task exception was never retrieved",
            None,
            (type(exc), exc, None),
        )
        return checkpoint._EchoFilter().filter(record)

    assert not kept(ValueError(sibling))
    assert kept(ValueError('NOT_FOUND: Error opening "/data/tofu/forget01.jsonl"'))
    assert kept(ValueError("tree structures differ"))


def _full_disk_at(step, monkeypatch):
    """The `step` checkpoint's JSON item fails with ENOSPC inside Orbax (after its arrays were scheduled)."""
    save_json = ocp.JsonCheckpointHandler._save_fn

    async def full_disk(self, x, directory):
        if re.search(rf"[/\\]{step}\.orbax-checkpoint-tmp", str(directory)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return await save_json(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)


def test_an_async_failure_surfacing_at_finish_is_reported_once(tmp_path, monkeypatch, caplog):
    state = {"w": jax.numpy.arange(4.0), "step": jax.numpy.int32(0)}
    mgr = checkpoint.manager(str(tmp_path), every=1, keep=1, async_save=True)
    _full_disk_at(2, monkeypatch)
    with caplog.at_level(logging.INFO):
        assert checkpoint.save(mgr, 1, state, {"cursor": [0, 0]})
        assert checkpoint.save(mgr, 2, state, {"cursor": [0, 1]})  # returns; the write fails behind it
        with pytest.raises(checkpoint.CheckpointWriteError) as e:
            checkpoint.finish(mgr)
    assert str(e.value).startswith(
        f"checkpoint write at step 2 failed: no space left on device ({tmp_path / 'ckpt'}); "
        "the previous checkpoint (step 1) is intact"
    )
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert checkpoint.finalized_steps(str(tmp_path)) == [1]


@pytest.fixture(scope="module")
def uninterrupted(model_dir, tmp_path_factory):
    return params_of(train.run(disk_cfg(model_dir, False), str(tmp_path_factory.mktemp("straight"))))


def disk_cfg(model_dir, async_save):
    return tiny_cfg(
        model_dir, max_steps=6, **{"ckpt.every": 2, "ckpt.keep": 1, "ckpt.async_save": async_save}
    )


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_disk_full_stops_with_one_error_and_a_rerun_resumes(
    model_dir, tmp_path, monkeypatch, caplog, uninterrupted, async_save
):
    """The step-4 write fails inside Orbax: keep=1 would delete step 2 once step 4 is complete, so step 2
    surviving shows nothing was deleted."""
    with monkeypatch.context() as m, caplog.at_level(logging.INFO):
        _full_disk_at(4, m)
        with pytest.raises(checkpoint.CheckpointWriteError) as e:
            train.run(disk_cfg(model_dir, async_save), str(tmp_path))
    assert str(e.value) == (
        f"checkpoint write at step 4 failed: no space left on device ({tmp_path / 'ckpt'}); the previous "
        "checkpoint (step 2) is intact; free space and rerun the same command to resume"
    )
    assert isinstance(e.value, errors.UserError)  # the command line prints it as one `error:` line
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # no echoes
    logged = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (logged[-1] > 4) == async_save  # async: the failure surfaced at a later save
    assert checkpoint.finalized_steps(str(tmp_path)) == [2]
    mgr = checkpoint.manager(str(tmp_path), 2, 1, False)
    assert mgr.latest_step() == 2  # what the rerun restores
    mgr.close()

    out = train.run(disk_cfg(model_dir, async_save), str(tmp_path))
    assert out["summary"]["resumed_from"] == 2 and out["summary"]["steps"] == 6
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert not list((tmp_path / "ckpt").glob("*orbax-checkpoint-tmp*"))  # the partial step 4 is gone
    for a, b in zip(params_of(out), uninterrupted, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_finished_run_drops_its_checkpoint_and_a_rerun_is_done(model_dir, tmp_path, capsys):
    def cfg(epochs):
        over = {"ckpt.keep_final": False, "export": True}
        return tiny_cfg(model_dir, max_steps=None, epochs=epochs, **over)

    train.run(cfg(1), str(tmp_path))
    assert not (tmp_path / "ckpt").exists() and (tmp_path / "model" / "config.json").exists()
    kept = files(tmp_path / "model")
    out = train.run(cfg(1), str(tmp_path))
    assert out.get("done")
    assert out["summary"]["steps"] == json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert files(tmp_path / "model") == kept
    with pytest.raises(errors.UserError, match="exported model"):  # another config never overwrites it
        train.run(cfg(2), str(tmp_path))
