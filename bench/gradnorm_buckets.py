"""GradNorm (mia_gradnorm) with per-item length buckets vs every item padded to the longest, interleaved.

  CEL_JAX_CACHE=/root/.cache/cel_jax python -m bench.gradnorm_buckets   # writes results/gradnorm_buckets.json

The items are the TOFU suite's own: forget01 answers + holdout01 (80 items, chat template, OU system
prompt), on the embedded SmolLM2-135M-Instruct. `evaluation.forward.gradnorm_scores` runs with
`per_item=True` (the CPU default: each item padded to its own multiple of 32) and `per_item=False` (every
item padded to the longest one's multiple of 32, what the suite did before: one compiled program). The
two take turns, the order alternating per repetition; each variant's compiles happen in a first call.
The scores of the two must agree (padding is masked); their largest relative difference is reported.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

from bench.interleave import interleaved, machine_info

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"buckets of 32": True, "one length": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "gradnorm_buckets.json"))
    args = ap.parse_args()
    import numpy as np

    from cel_jax import data as D
    from cel_jax import hf_io
    from cel_jax.evaluation import forward as F
    from cel_jax.evaluation import report as R
    from cel_jax.evaluation import tofu

    model, tok = hf_io.load_pretrained(args.model)
    cfg = tofu.default_config()
    rows = tofu.load_sets(cfg, {"gradnorm"})
    enc = tofu.encoder(tok, cfg)
    items = [enc(r["question"], r["answer"]) for r in rows["forget"] + rows["holdout"]]
    pad = D.pad_id_of(tok)
    lens = [len(it["input_ids"]) for it in items]

    def score(per_item: bool) -> list:
        return F.gradnorm_scores(model, items, pad, per_item=per_item, progress=False)

    ab = interleaved({k: functools.partial(score, m) for k, m in VARIANTS.items()}, args.reps)
    scores, med = ab["outputs"], ab["median_s"]
    a, b = (np.asarray(scores[k], np.float64) for k in VARIANTS)
    result = {
        "command": "python -m bench.gradnorm_buckets" + (f" --reps {args.reps}" if args.reps != 2 else ""),
        "items": len(items),
        "lengths": {"min": min(lens), "max": max(lens), "mean": round(float(np.mean(lens)), 1)},
        "padded_tokens": {
            "buckets of 32": int(sum(F.round_up(n, 32) for n in lens)),
            "one length": len(lens) * F.round_up(max(lens), 32),
        },
        "first_call_s": ab["first_call_s"],
        "times_s": ab["times_s"],
        "median_s": med,
        "speedup": round(med["one length"] / med["buckets of 32"], 3),
        "max_rel_score_diff": float(np.max(np.abs(a - b) / np.abs(b))),
        "machine": machine_info(),
        "load_end": os.getloadavg(),
    }
    R.write_json_atomic(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
