"""GradNorm (mia_gradnorm) timed two ways, interleaved: length buckets, or ghost norms vs batch 1.

  python -m bench.gradnorm_buckets                  # -> results/gradnorm_buckets.json
  python -m bench.gradnorm_buckets --compare ghost  # -> results/gradnorm_ghost.json
  (with CEL_JAX_CACHE=/root/.cache/cel_jax, where the embedded model was converted)

The items are the TOFU suite's own: forget01 answers + holdout01 (80 items, chat template, OU system
prompt), on the embedded SmolLM2-135M-Instruct. `evaluation.gradnorm.gradnorm_scores` runs with
`per_item=True` (the CPU default: each item padded to its own multiple of 32) and `per_item=False` (every
item padded to the longest one's multiple of 32, what the suite did before: one compiled program), both
one full gradient per item (`ghost=0`). `--compare ghost`: per-item buckets with `ghost=8` (8 items per
call, every tensor's norm from one backward pass to the activations, evaluation/ghost.py; the suite's
default) vs `ghost=0` (one full gradient per item, the reference's way). The two take turns, the order
alternating per repetition; each variant's compiles happen in a first call. The scores of the two must
agree; their largest relative difference is reported.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

from bench.interleave import interleaved, machine_info

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = {  # name -> {variant: gradnorm_scores arguments}; speedup = time of the 2nd / time of the 1st
    "buckets": {"buckets of 32": dict(per_item=True, ghost=0), "one length": dict(per_item=False, ghost=0)},
    "ghost": {
        "ghost norms, 8 per call": dict(per_item=True, ghost=8),
        "batch 1": dict(per_item=True, ghost=0),
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--compare", default="buckets", choices=sorted(COMPARISONS))
    ap.add_argument("--out", default=None, help="default: results/gradnorm_<compare>.json")
    args = ap.parse_args()
    variants = COMPARISONS[args.compare]
    out = args.out or str(ROOT / "results" / f"gradnorm_{args.compare}.json")
    import numpy as np

    from cel_jax import data as D
    from cel_jax.evaluation import forward as F
    from cel_jax.evaluation import gradnorm as G
    from cel_jax.evaluation import report as R
    from cel_jax.evaluation import tofu
    from cel_jax.model import hf_io

    model, tok = hf_io.load_pretrained(args.model)
    cfg = tofu.default_config()
    rows = tofu.load_sets(cfg, {"gradnorm"})
    enc = tofu.encoder(tok, cfg)
    items = [enc(r["question"], r["answer"]) for r in rows["forget"] + rows["holdout"]]
    pad = D.pad_id_of(tok)
    lens = [len(it["input_ids"]) for it in items]

    def score(kw: dict) -> list:
        return G.gradnorm_scores(model, items, pad, progress=False, **kw)

    ab = interleaved({k: functools.partial(score, kw) for k, kw in variants.items()}, args.reps)
    scores, med = ab["outputs"], ab["median_s"]
    first, second = variants
    a, b = (np.asarray(scores[k], np.float64) for k in variants)
    result = {
        "command": "python -m bench.gradnorm_buckets"
        + (f" --compare {args.compare}" if args.compare != "buckets" else "")
        + (f" --reps {args.reps}" if args.reps != 2 else ""),
        "variants": variants,
        "items": len(items),
        "lengths": {"min": min(lens), "max": max(lens), "mean": round(float(np.mean(lens)), 1)},
        "padded_tokens": {
            "buckets of 32": int(sum(F.round_up(n, 32) for n in lens)),
            "one length": len(lens) * F.round_up(max(lens), 32),
        },
        "first_call_s": ab["first_call_s"],
        "times_s": ab["times_s"],
        "median_s": med,
        "speedup": round(med[second] / med[first], 3),
        "max_rel_score_diff": float(np.max(np.abs(a - b) / np.abs(b))),
        "machine": machine_info(),
        "load_end": os.getloadavg(),
    }
    R.write_json_atomic(out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
