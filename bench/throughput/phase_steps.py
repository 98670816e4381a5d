"""Phases (1)-(3): our PDU and GradDiff steps against the PyTorch step, interleaved, with the matmul peaks,
the loss-head differential and the breakdown; and our step with the LM head on all rows vs answer rows."""

from __future__ import annotations

from collections.abc import Sequence

from bench.throughput.common import loadavg, log, maxrss_mb, median, rotate
from bench.throughput.device import jax_device_memory, mm_sizes_for
from bench.throughput.jax_measure import jax_breakdown, jax_matmul_peak, loss_head_times
from bench.throughput.jax_step import compile_step, jnp_copy, make_jax_step, run_step
from bench.throughput.torch_worker import TorchWorker


def _peaks(samples: Sequence[dict]) -> dict:
    """Best and median of the matmul peaks measured through the run (the load moves them)."""
    return {"best": max(p["peak"] for p in samples), "median": median([p["peak"] for p in samples])}


def phase_steps(
    model,
    worker: TorchWorker,
    batch: dict,
    flops: dict,
    rss: dict,
    args,
    res: dict | None = None,
    dev_mem: dict | None = None,
) -> dict:
    """(1)-(3): compile, warm up, then interleaved PDU / PyTorch / GradDiff steps and matmul peaks (in the
    compute dtype, sizes and matmuls per timing from `res`, else the CPU's).
    The model's arrays become the PDU state's parameters, donated by the first step: `model` is dead after."""
    import jax

    res = res or {}
    dev_mem = {} if dev_mem is None else dev_mem
    mm = {
        "sizes": res.get("mm_sizes") or mm_sizes_for("cpu", args.mm_sizes),
        "inner": res.get("mm_inner", 1),
    }
    jax_peak_fn = lambda: jax_matmul_peak(mm["sizes"], dtype=args.dtype, inner=mm["inner"])  # noqa: E731

    log("PDU step: compile")
    pdu = make_jax_step(
        model, "pdu", "primal_dual", batch, lam0=args.lam0, eps=args.eps, dual_lr=args.dual_lr
    )
    comp = {"pdu": compile_step(pdu, batch)}
    log("PDU step and PyTorch step: warm-up (first runs, same weights and batch)")
    warm: dict[str, float] = {}
    warm["pdu_first_step_s"], _, warm["pdu_first_loss"] = run_step(pdu, batch)
    t0 = worker("step", batch=batch)
    warm["torch_first_step_s"], warm["torch_first_loss"] = t0["seconds"], t0["loss"]
    warm["first_loss_rel_diff"] = abs(warm["pdu_first_loss"] - t0["loss"]) / max(abs(t0["loss"]), 1e-12)
    rss["after_pdu_warmup"] = maxrss_mb()
    dev_mem["after_pdu_warmup"] = jax_device_memory()

    log("GradDiff step: compile")
    gd = make_jax_step(
        model,
        "grad_diff",
        "scalarized",
        batch,
        eps=args.eps,
        params=jax.tree.map(jnp_copy, pdu["state"].params),
    )
    comp["grad_diff"] = compile_step(gd, batch)

    peaks = {"jax": [jax_peak_fn()], "torch": [worker("matmul", **mm)]}
    S: dict[str, list] = {k: [] for k in ("pdu", "grad_diff", "torch", "pdu_dispatch", "loadavg")}
    S.update(torch_parts=[], losses_pdu=[], losses_torch=[])
    for rep in range(args.reps):
        log(f"step rep {rep + 1}/{args.reps} (1-min load {loadavg()[0]})")
        for what in rotate(["pdu", "torch", "grad_diff"], rep):
            if what == "pdu":
                s, d, loss = run_step(pdu, batch)
                S["pdu"].append(s)
                S["pdu_dispatch"].append(d)
                S["losses_pdu"].append(loss)
            elif what == "grad_diff":
                S["grad_diff"].append(run_step(gd, batch)[0])
            else:
                o = worker("step", batch=batch)
                S["torch"].append(o["seconds"])
                S["losses_torch"].append(o["loss"])
                S["torch_parts"].append({k: o[k] for k in ("forward_s", "backward_s", "optimizer_s")})
        peaks["jax"].append(jax_peak_fn())
        peaks["torch"].append(worker("matmul", **mm))
        S["loadavg"].append(loadavg()[0])
    rss["after_steps"] = maxrss_mb()
    dev_mem["after_steps"] = jax_device_memory()
    m_pdu, m_gd, m_t = median(S["pdu"]), median(S["grad_diff"]), median(S["torch"])
    tokens, jax_peak, torch_peak = flops["tokens"], _peaks(peaks["jax"]), _peaks(peaks["torch"])
    achieved, achieved_t = flops["total"] / m_pdu / 1e9, flops["total"] / m_t / 1e9
    steps = {
        "samples_s": S,
        "median_s": {"pdu": m_pdu, "grad_diff": m_gd, "torch": m_t},
        "tokens_per_s": {"pdu": tokens / m_pdu, "grad_diff": tokens / m_gd, "torch": tokens / m_t},
        "speedup_pdu_vs_torch": m_t / m_pdu,
        "pdu_over_graddiff": m_pdu / m_gd,
        "pdu_over_graddiff_paired": median([a / b for a, b in zip(S["pdu"], S["grad_diff"], strict=True)]),
        "torch_parts_median_s": {
            k: median([p[k] for p in S["torch_parts"]]) for k in ("forward_s", "backward_s", "optimizer_s")
        },
    }
    log("loss-head differential PDU vs GradDiff")
    head = loss_head_times(args.batch, args.seq, model.cfg.vocab_size)
    head["estimated_ratio"] = (m_gd + head["delta_s"]) / m_gd
    head["xla_flops_ratio"] = comp["pdu"]["xla_flops"] / comp["grad_diff"]["xla_flops"]
    steps["loss_head"] = head
    out = {
        "compile": comp,
        "warmup": warm,
        "steps": steps,
        "matmul_peak_gflops": {"jax": jax_peak, "torch": torch_peak, "samples": peaks},
        "mfu": {
            "achieved_gflops_pdu": achieved,
            "achieved_gflops_torch": achieved_t,
            "fraction_of_best_peak": achieved / jax_peak["best"],
            "fraction_of_median_peak": achieved / jax_peak["median"],
            "torch_fraction_of_torch_best_peak": achieved_t / torch_peak["best"],
            "xla_cost_analysis_flops": comp["pdu"]["xla_flops"],
            # the work XLA actually does (less than the formula: the LM head runs on answer rows only)
            "xla_gflops_per_s_pdu": comp["pdu"]["xla_flops"] / m_pdu / 1e9,
            "xla_fraction_of_best_peak": comp["pdu"]["xla_flops"] / m_pdu / 1e9 / jax_peak["best"],
        },
    }
    if args.breakdown:
        log("breakdown: forward-only and optimizer-only programs")
        bd = jax_breakdown(pdu, batch, reps=1)
        bd["step_s"] = m_pdu
        bd["backward_s_estimate"] = m_pdu - bd["forward_s"] - bd["optimizer_s"]
        bd["dispatch_s"] = median(S["pdu_dispatch"])
        out["breakdown_ours"] = bd
    if args.all_rows:
        del gd  # frees its state before the next one
        out["all_rows"] = phase_all_rows(model, pdu, batch, args)
    return out


def phase_all_rows(model, pdu: dict, batch: dict, args) -> dict:
    """Our PDU step with `lm_head_rows="all"` (LM head on every row, as before answer_rows.py) vs the
    default, interleaved, from the same parameters; their first losses must agree."""
    import jax

    log("PDU step with the LM head on all rows: compile")
    full = make_jax_step(
        model,
        "pdu",
        "primal_dual",
        batch,
        lam0=args.lam0,
        eps=args.eps,
        dual_lr=args.dual_lr,
        params=jax.tree.map(jnp_copy, pdu["state"].params),
        lm_head_rows="all",
    )
    full["state"] = full["state"].replace(
        dual=jax.tree.map(lambda x: x.copy(), pdu["state"].dual), eps=pdu["state"].eps.copy()
    )
    comp = compile_step(full, batch)
    t: dict[str, list[float]] = {"answers": [], "all": []}
    first: dict[str, float] = {}
    for rep in range(args.reps):
        log(f"all-rows rep {rep + 1}/{args.reps}")
        for k in rotate(["all", "answers"], rep):
            s, _, loss = run_step(pdu if k == "answers" else full, batch)
            t[k].append(s)
            first.setdefault(k, loss)
    m_ans, m_all = median(t["answers"]), median(t["all"])
    caps = dict(pdu["spec"].answer_rows)
    return {
        "capacity": caps,
        "rows_per_sequence": int(batch["forget"]["labels"].shape[-1]),
        "compile": comp,
        "samples_s": t,
        "median_s": {"answers": m_ans, "all": m_all},
        "speedup_answers_vs_all": m_all / m_ans,
        "first_loss": first,
        "first_loss_rel_diff": abs(first["all"] - first["answers"]) / max(abs(first["all"]), 1e-12),
    }
