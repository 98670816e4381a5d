"""bench.dual_rules --reuse: a kept run stands beside a new one only if both unlearned the same target
(and the float comparison it and bench.tofu_sweep --reuse share)."""

import copy
import json
from pathlib import Path

import pytest

from bench import dual_rules

RESULTS = Path(__file__).resolve().parents[1] / "results" / "dual_rules" / "results.json"


def test_committed_runs_share_one_target_and_another_target_is_refused():
    runs = json.loads(RESULTS.read_text())["runs"]
    assert len(runs) >= 2
    for new in runs:  # the committed rows: every (rule, α) unlearned the same cached target
        dual_rules.check_same_target(new, runs)
    other = copy.deepcopy(runs[0])
    other["eps"] *= 1.01  # another target's retain loss (same α)
    with pytest.raises(ValueError, match="unlearned another target"):
        dual_rules.check_same_target(other, runs[1:])
    other = {**runs[0], "retain_rouge_before": runs[0]["retain_rouge_before"] - 0.01}
    with pytest.raises(ValueError, match="unlearned another target"):
        dual_rules.check_same_target(other, runs[1:])


def test_same_values_tolerates_float_noise_only():
    from bench.tofu_report import same_values

    assert same_values([0.3, None], [0.3 * (1 + 1e-12), None])
    assert not same_values([0.3, None], [0.3, 0.0])  # None only equals None
    assert not same_values([0.3], [0.3001])
