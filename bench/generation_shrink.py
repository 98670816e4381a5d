"""TOFU generation (the suite's ROUGE prompts) before and after batch shrinking, interleaved.

  CEL_JAX_CACHE=/root/.cache/cel_jax python -m bench.generation_shrink --model runs/tofu_mini/pdu/model
  # writes results/generation_shrink.json

The prompts are TOFU-mini's 100 generation items (forget01 + the mini preset's retain / real-author /
world-fact subsets, chat template, OU system prompt), max_new_tokens 200, greedy. Variants:
- "before": batches of at most 64 (2 x 50 rows), every row decoded until all rows of its batch are done
  (what the suite did before: a batch runs as long as its longest answer);
- "after": one batch of 100, decoded 16 steps at a time; between segments the rows still generating
  are gathered into the smallest of `generate.SHRINK_SIZES` that holds them.
The two take turns, the order alternating per repetition; each variant's compiles happen in a first
call. Token outputs must be identical (the same greedy decoding, row by row); the answer-length
distribution is reported, since the gain depends on it: a model whose answers all stop early, or all
run to 200 tokens, gains least; one with a few long answers gains most.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

from bench.interleave import interleaved, machine_info

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"before": dict(batch_size=64, shrink=False), "after": dict(batch_size=128, shrink=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model folder or the embedded name")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "generation_shrink.json"))
    args = ap.parse_args()
    import numpy as np

    from bench.tofu_mini import PRESETS
    from cel_jax import data as D
    from cel_jax.evaluation import batched_generation as BG
    from cel_jax.evaluation import report as R
    from cel_jax.evaluation import tofu
    from cel_jax.evaluation.generate import eos_token_ids
    from cel_jax.model import hf_io

    model, tok = hf_io.load_pretrained(args.model)
    cfg = tofu.default_config()
    cfg.subsets = PRESETS["mini"]["subsets"]
    sets = ("forget", "retain", "ra", "wf")
    rows = tofu.load_sets(cfg, {f"gen:{s}" for s in sets})
    enc = tofu.encoder(tok, cfg)
    prompts = [enc(r["question"], r["answer"], generate=True)["input_ids"] for s in sets for r in rows[s]]
    kw = dict(eos_ids=eos_token_ids(model, tok), pad_id=D.pad_id_of(tok), max_new_tokens=200, progress=False)

    def gen(name: str) -> list:
        return BG.generate_ids(model, prompts, **VARIANTS[name], **kw)

    ab = interleaved({k: functools.partial(gen, k) for k in VARIANTS}, args.reps)
    outs, med = ab["outputs"], ab["median_s"]
    lens = np.asarray([len(o) for o in outs["after"]])
    result = {
        "command": "python -m bench.generation_shrink --model "
        + args.model
        + (f" --reps {args.reps}" if args.reps != 2 else ""),
        "prompts": len(prompts),
        "answer_tokens": {
            "mean": round(float(lens.mean()), 1),
            "median": float(np.median(lens)),
            "at_max_new_tokens": int((lens >= 200).sum()),
        },
        "identical_outputs": outs["before"] == outs["after"],
        "first_call_s": ab["first_call_s"],
        "times_s": ab["times_s"],
        "median_s": med,
        "speedup": round(med["before"] / med["after"], 3),
        "machine": machine_info(),
        "load_end": os.getloadavg(),
    }
    R.write_json_atomic(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
