"""Compile and step time of the unlearning step with its parts stacked into one decoder pass vs one pass
per part (cel_jax.step.STACK_PARTS), on the embedded SmolLM2 and TOFU rows.

  python -m bench.probes.step_parts [METHOD ...]   # default: pdu grad_diff; B = 4 forget + 4 retain, T = 128

For each method and mode, in one process: trace+lower and XLA compile seconds (persistent cache off), then
the step time, modes interleaved (median of 3), and the first-step losses of both modes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import throughput as tp
from cel_jax import hf_io
from cel_jax import step as step_lib

SOLVER = {"pdu": "primal_dual", "pdu_entropy": "primal_dual"}


def main(methods=("pdu", "grad_diff"), B: int = 4, T: int = 128) -> dict:
    folder = str(hf_io.resolve("smollm2-135m-instruct"))
    tok = hf_io.load_tokenizer(folder)
    tofu = Path(tp.TOFU_DIR)
    batch = tp.train_batch(
        tok, tp.read_jsonl(tofu / "forget01.jsonl"), tp.read_jsonl(tofu / "full.jsonl")[:400], B, T
    )
    model, _ = hf_io.load_pretrained(folder, with_tokenizer=False)
    out: dict = {"B_forget": B, "B_retain": B, "T": T, "machine": tp.cpu_name(), "methods": {}}
    for method in methods:
        runs = {}
        for mode in ("separate", "stack"):
            step_lib.STACK_PARTS = mode
            params = jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # donated
            st = tp.make_jax_step(model, method, SOLVER.get(method, "scalarized"), batch, params=params)
            runs[mode] = (st, tp.compile_step(st, batch))
        times: dict = {m: [] for m in runs}
        losses: dict = {m: [] for m in runs}
        for _ in range(3):
            for mode, (st, _) in runs.items():
                s, _, loss = tp.run_step(st, batch)
                times[mode].append(s)
                losses[mode].append(loss)
        out["methods"][method] = {
            mode: {
                "trace_lower_s": round(c["trace_lower_s"], 2),
                "compile_s": round(c["compile_s"], 2),
                "step_s_median": round(float(np.median(times[mode])), 3),
                "step_s": [round(t, 2) for t in times[mode]],
                "losses": losses[mode],
            }
            for mode, (_, c) in runs.items()
        }
    return out


if __name__ == "__main__":
    jax.config.update("jax_enable_compilation_cache", False)
    print(json.dumps(main(tuple(sys.argv[1:]) or ("pdu", "grad_diff")), indent=1))
