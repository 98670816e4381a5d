"""Phases on both sides that are not the training step: (4) the TOFU eval, interleaved, and the CPU-only
comparison of torch's OpenMP wait policies."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from bench.throughput.common import loadavg, log, median, rotate
from bench.throughput.jax_measure import jax_eval
from bench.throughput.torch_worker import TorchWorker
from bench.throughput.workload import agreement


def phase_eval(model, tok, worker: TorchWorker, items, prompts, pad_id: int, args) -> dict:
    """(4): first calls (compile / warm-up), then interleaved repetitions of forward + generation."""
    from cel_jax.evaluation import generate as gen

    log("eval: first calls (compile / warm-up)")
    eos_ids = gen.eos_token_ids(model, tok)
    ours = lambda: jax_eval(model, items, prompts, pad_id, eos_ids, args.max_new_tokens)
    t_fwd = lambda: worker("forward", items=items, pad_id=pad_id)
    t_gen = lambda: worker(
        "generate", prompts=prompts, eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=args.max_new_tokens
    )
    first_ours, tf, tg = ours(), t_fwd(), t_gen()
    first = {
        "ours_forward_s": first_ours["forward_s"],
        "ours_generate_s": first_ours["generate_s"],
        "torch_forward_s": tf["seconds"],
        "torch_generate_s": tg["seconds"],
    }
    ev: dict[str, list] = {
        k: [] for k in ("ours_forward", "ours_generate", "torch_forward", "torch_generate")
    }
    ev["loadavg"] = []
    for rep in range(args.eval_reps):
        log(f"eval rep {rep + 1}/{args.eval_reps}")
        for side in rotate(["ours", "torch"], rep):
            if side == "ours":
                o = ours()
                ev["ours_forward"].append(o["forward_s"])
                ev["ours_generate"].append(o["generate_s"])
            else:
                ev["torch_forward"].append(t_fwd()["seconds"])
                ev["torch_generate"].append(t_gen()["seconds"])
        ev["loadavg"].append(loadavg()[0])
    med = {k: median(v) for k, v in ev.items() if k != "loadavg"}
    diff = np.asarray(first_ours["avg_loss"], float) - np.asarray(tf["avg_loss"], float)
    return {
        "items": len(items),
        "max_new_tokens": args.max_new_tokens,
        "first_call_s": first,
        "samples_s": ev,
        "median_s": med,
        "speedup_forward": med["torch_forward"] / med["ours_forward"],
        "speedup_generate": med["torch_generate"] / med["ours_generate"],
        "speedup_total": (med["torch_forward"] + med["torch_generate"])
        / (med["ours_forward"] + med["ours_generate"]),
        "generated_tokens_ours": sum(len(x) for x in first_ours["ids"]),
        "generated_tokens_torch": sum(len(x) for x in tg["ids"]),
        "agreement": agreement(first_ours["ids"], tg["ids"]),
        "max_abs_avg_loss_diff": float(np.max(np.abs(diff))),
    }


def omp_compare(worker: TorchWorker, args, part: dict, reps: int = 1) -> dict:
    """No-grad forwards of one batch part: the main worker (args.omp_wait) vs a second worker with libgomp's
    default wait policy, same thread count, interleaved; medians in seconds."""
    other = TorchWorker(replace(worker.spec, omp_wait="default"))
    try:
        t: dict[str, list[float]] = {"main": [], "default_policy": []}
        for w in (worker, other):
            w("forward_batch", part=part)
        for r in range(reps):
            for k in rotate(list(t), r):
                t[k].append((worker if k == "main" else other)("forward_batch", part=part)["seconds"])
    finally:
        other.close()
    out: dict[str, Any] = {"main_policy": args.omp_wait, "threads": worker.spec.threads, "samples_s": t}
    out["main_s"], out["default_policy_s"] = median(t["main"]), median(t["default_policy"])
    out["default_over_main"] = out["default_policy_s"] / out["main_s"]
    return out
