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
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"buckets of 32": True, "one length": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "gradnorm_buckets.json"))
    args = ap.parse_args()
    import jax
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

    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    scores, warm = {}, {}
    for name, m in VARIANTS.items():  # first calls: the compiles
        t = time.perf_counter()
        scores[name] = score(m)
        warm[name] = round(time.perf_counter() - t, 2)
    for rep in range(args.reps):
        for name in list(VARIANTS)[:: 1 if rep % 2 == 0 else -1]:
            t = time.perf_counter()
            score(VARIANTS[name])
            times[name].append(round(time.perf_counter() - t, 2))
            print(name, times[name][-1], "s", os.getloadavg(), flush=True)
    a, b = (np.asarray(scores[k], np.float64) for k in VARIANTS)
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = {
        "command": "python -m bench.gradnorm_buckets" + (f" --reps {args.reps}" if args.reps != 2 else ""),
        "items": len(items),
        "lengths": {"min": min(lens), "max": max(lens), "mean": round(float(np.mean(lens)), 1)},
        "padded_tokens": {
            "buckets of 32": int(sum(F.round_up(n, 32) for n in lens)),
            "one length": len(lens) * F.round_up(max(lens), 32),
        },
        "first_call_s": warm,
        "times_s": times,
        "median_s": med,
        "speedup": round(med["one length"] / med["buckets of 32"], 3),
        "max_rel_score_diff": float(np.max(np.abs(a - b) / np.abs(b))),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__},
        "load_end": os.getloadavg(),
    }
    R.write_json_atomic(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
