"""Epochs are passes: under gradient accumulation an epoch is exactly one pass over the forget set, the
warm start ends where the reference's does, and λ first moves on the reference's step."""

import math

import numpy as np
import pytest
from test_train import model_dir, rows, tiny_cfg  # noqa: F401  (model_dir is a fixture)

from cel_jax import data
from cel_jax.data.train_data import TrainData
from cel_jax.training import train


def fake_data(n_forget: int, n_retain: int = 9) -> TrainData:
    item = lambda i: {"input_ids": [1, 2, 3 + i % 5], "labels": [-100, 2, 3 + i % 5]}
    return TrainData(
        forget_rows=[{}] * n_forget,
        retain_rows=[{}] * n_retain,
        forget_items=[item(i) for i in range(n_forget)],
        retain_items=[item(i) for i in range(n_retain)],
        idk_items=[],
        pad_id=0,
        buckets=(8,),
        seed=0,
        shuffle=True,
        compat_mask=False,
        paired=True,
        system_prompt=None,
    )


def reference_schedule(n: int, batch: int, accum: int, epochs: int, warmup: int) -> list[tuple[int, bool]]:
    """HF Trainer + the PDU callback: per epoch ceil(n/B) micro-batches, an optimizer step every `accum`
    of them and one more for a partial remainder at the epoch's end; updates enabled by on_epoch_end once
    epoch >= warmup. Returns (epoch, dual update enabled) per optimizer step."""
    k = math.ceil(n / batch)
    return [(e, e >= warmup) for e in range(epochs) for _ in range(math.ceil(k / accum))]


@pytest.mark.parametrize("n,batch,accum", [(20, 4, 2), (40, 32, 4), (40, 4, 4), (7, 2, 3), (16, 4, 4)])
def test_one_epoch_is_one_pass(n, batch, accum):
    td, epochs = fake_data(n), 3
    steps = td.steps_per_epoch(batch, accum)
    assert steps * epochs == len(reference_schedule(n, batch, accum, epochs, 0))
    cursor, seen = data.Cursor(), {}
    for _ in range(steps * epochs):
        epoch = cursor.epoch if cursor.position < n else cursor.epoch + 1
        b, cursor = td.next_batch(cursor, batch, accum)
        assert b["forget"]["input_ids"].shape[:2] == (accum, batch)
        valid = b["valid_M"] > 0
        assert valid[0] and list(valid) == sorted(valid, reverse=True)  # fillers only at the end
        ids = b["forget"]["labels"][valid]  # rows of real micro-batches (padded rows are all IGNORE)
        seen[epoch] = seen.get(epoch, 0) + int(np.sum(np.any(ids != -100, axis=-1)))
    assert seen == {e: n for e in range(epochs)}  # every epoch is exactly one pass
    assert cursor == data.Cursor(epochs, 0)


def test_lambda_first_moves_on_the_reference_step(model_dir, tmp_path):  # noqa: F811
    # tiny: 20 forget items, B 4, M 2 -> 5 micro-batches, 3 steps per epoch; warm start 1 epoch
    cfg = tiny_cfg(model_dir, max_steps=None, epochs=2, **{"dual.mode": "microbatch"})
    train.run(cfg, str(tmp_path))
    log = rows(tmp_path)
    ref = reference_schedule(20, 4, 2, 2, 1)
    assert [r["epoch"] for r in log] == [e for e, _ in ref]  # 2 epochs = 2 passes, 6 steps
    assert [r["dual_active"] for r in log] == [a for _, a in ref]
    first_move = next(r["step"] for r in log if r["dual_next"] != r["dual"])
    assert first_move == next(i + 1 for i, (_, a) in enumerate(ref) if a) == 4
    assert [r["valid_micro"] for r in log][:3] == [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
