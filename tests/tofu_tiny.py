"""bench.tofu_mini's protocol on a tiny random model and the TOFU-format fixtures (tests/fixtures/tofu),
shared by the tofu_mini and tofu_sweep tests: the sweep reuses the tiny run's target, retain model and
evaluations."""

import pytest
from conftest import TOFU_FIXTURES
from tiny_model import make_tiny_model_dir

from bench import tofu_mini

TINY = dict(
    retain_rows="0:8",
    ft=dict(epochs=1, lr=1e-3, batch_size=8, warmup_epochs=0.0),
    unlearn=dict(epochs=2, batch_size=8, lr=1e-3, warmup_epochs=0.0, dual_warmup_epochs=1),
    subsets="forget=0:8;holdout=0:8;retain=0:8:2;ra=0:4;wf=0:4",
    eval_extra=dict(max_new_tokens=4, bucket_multiple=64, generation_batch_size=32, progress=False),
)

# The fixtures hold 24 rows of `full`, forget01 = its last 8 (real TOFU: 4000 rows, forget01 = rows
# 3960:4000, tofu_mini.FORGET_ROWS).
FIXTURE_FORGET_ROWS = "16:24"
N_FORGET = 8


def run_mini(root):
    """The tiny bench.tofu_mini run (PDU and GradDiff) in `root`: (root, results)."""
    model = make_tiny_model_dir(root / "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tofu_mini, "FORGET_ROWS", FIXTURE_FORGET_ROWS)
        mp.setitem(tofu_mini.PRESETS, "tiny", TINY)
        res = tofu_mini.run(
            "tiny", root / "work", root / "out", ["pdu", "grad_diff"], str(model), str(TOFU_FIXTURES)
        )
    return root, res
