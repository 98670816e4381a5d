"""The whole benchmark (`run`): load both sides, run the phases, collect memory and parity, score the goals
(`goal_table`). The results dict it fills is what report.py writes."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.throughput.cli import command_line
from bench.throughput.common import loadavg, log, maxrss_mb, timed
from bench.throughput.device import (
    CPU_ONLY_REASON,
    MM_INNER,
    TORCH_DEVICE,
    jax_device_memory,
    machine_info,
    mm_sizes_for,
    parity_report,
    precision_recipe,
    resolve_device,
)
from bench.throughput.fsdp import run_fsdp_subprocess
from bench.throughput.phase_eval import omp_compare, phase_eval
from bench.throughput.phase_steps import phase_steps
from bench.throughput.torch_worker import TorchWorker, WorkerSpec
from bench.throughput.workload import eval_items, model_flops, read_jsonl, train_batch


def run(args: argparse.Namespace, res: dict | None = None) -> dict:
    """The whole benchmark; returns the results dict (written by `write_results`). `res`, when given, is
    filled in place, so a caller keeps what was measured when a later phase fails."""
    t_start = time.time()
    res = {} if res is None else res
    res.update({"command": command_line(args), "loadavg_start": loadavg(), "args": vars(args)})
    rss: dict[str, float] = {"start": maxrss_mb()}
    import jax

    from cel_jax import data
    from cel_jax.model import hf_io

    args.data = args.data or (str(data.tofu_dir()) if data.tofu_dir() else None)  # recorded in res["args"]
    if not args.data or not (Path(args.data) / "forget01.jsonl").is_file():
        raise FileNotFoundError(
            f"no TOFU JSONL files in {args.data!r}: pass --data=/path/to/tofu or set CEL_JAX_TOFU_DIR"
        )
    device = resolve_device(args.device, jax.default_backend())
    tdev = TORCH_DEVICE[device]
    res["device"], res["dtype"], res["torch_device"] = device, args.dtype, tdev
    res["mm_sizes"], res["mm_inner"] = mm_sizes_for(device, args.mm_sizes), MM_INNER[device]
    res["precision"] = precision_recipe(args.dtype, device)
    res["skipped"] = {}
    dev_mem: dict[str, dict | None] = {}
    res["machine"] = machine_info()
    folder = str(hf_io.resolve(args.model))
    tok = hf_io.load_tokenizer(folder)
    rss["imports_and_tokenizer"] = maxrss_mb()
    tofu = Path(args.data)
    forget = read_jsonl(tofu / "forget01.jsonl")
    batch = train_batch(tok, forget, read_jsonl(tofu / "full.jsonl")[:400], args.batch, args.seq)
    items, prompts = eval_items(tok, forget[: args.eval_items])

    log(f"starting the PyTorch worker (torch device {tdev}, {args.dtype})")
    if device == "gpu":
        threads, omp_wait = 0, None
        res["skipped"]["torch_threads"] = f"{CPU_ONLY_REASON}; torch keeps its default thread count"
        res["skipped"]["omp_wait"] = f"{CPU_ONLY_REASON}; OMP_WAIT_POLICY left as the environment has it"
    else:
        threads, omp_wait = args.torch_threads or os.cpu_count() or 1, args.omp_wait
    spec = WorkerSpec(
        folder, threads, args.attn, args.lam0, args.eps, args.dual_lr, omp_wait, device=tdev, dtype=args.dtype
    )
    worker = TorchWorker(spec)
    res["torch_info"] = dict(worker.info)
    log(f"loading our model (model.dtype={args.dtype}, param_dtype=float32)")
    (model, _), t_load = timed(
        lambda: hf_io.load_pretrained(folder, dtype=args.dtype, param_dtype="float32", with_tokenizer=False)
    )
    rss["model_loaded"] = maxrss_mb()
    dev_mem["model_loaded"] = jax_device_memory()
    res["load_s"] = {"ours": t_load, "torch": worker.info["load_s"]}
    flops = model_flops(model.cfg, 2 * args.batch, args.seq)
    res["shapes"] = {"M": 1, "B_forget": args.batch, "B_retain": args.batch, "T": args.seq}
    res["shapes"]["tokens"] = flops["tokens"]
    res["flops_formula"] = "6*N*tokens + 12*L*T*(n_heads*head_dim)*tokens; tokens = M*(B_f+B_r)*T (padded)"
    res["flops"] = flops
    try:
        res["eval"] = phase_eval(model, tok, worker, items, prompts, data.pad_id_of(tok), args)
        rss["after_eval"] = maxrss_mb()
        dev_mem["after_eval"] = jax_device_memory()
        res["torch_after_eval"] = worker("rss")
        res["torch_rss_after_eval"] = res["torch_after_eval"]["maxrss_mb"]
        res.update(phase_steps(model, worker, batch, flops, rss, args, res, dev_mem))
        if args.omp_compare and device == "gpu":
            res["skipped"]["omp_compare"] = CPU_ONLY_REASON
        elif args.omp_compare:
            log("torch thread-policy check: libgomp's default wait policy (second worker)")
            res["omp_compare"] = omp_compare(worker, args, batch["retain"])
    finally:
        res["torch_final"] = worker.close()
    rss["end"] = maxrss_mb()
    dev_mem["end"] = jax_device_memory()
    res["memory_mb"] = {
        "ours_phases": rss,
        "ours_peak_through_eval": rss["after_eval"],
        "ours_peak_one_training_state": rss["after_pdu_warmup"],
        "ours_peak_end": rss["end"],
        "torch_after_load": res["torch_info"]["maxrss_mb"],
        "torch_peak_through_eval": res["torch_rss_after_eval"],
        "torch_peak_training": res["torch_final"]["maxrss_mb"],
        "how": "peak RSS (VmHWM) of each process (ours: this process; PyTorch: its spawned worker process)",
    }
    if device == "gpu":
        tf = res["torch_final"]
        res["device_memory_mb"] = {
            "ours_phases": dev_mem,
            "ours_peak": max((m["peak_mb"] or 0.0 for m in dev_mem.values() if m), default=None),
            "torch_after_load": res["torch_info"].get("cuda_max_allocated_mb"),
            "torch_peak_through_eval": res["torch_after_eval"].get("cuda_max_allocated_mb"),
            "torch_peak": tf.get("cuda_max_allocated_mb"),
            "torch_peak_reserved": tf.get("cuda_max_reserved_mb"),
            "how": "ours: peak_bytes_in_use of JAX's allocator on device 0 (memory_stats(), None where not "
            "reported); PyTorch: torch.cuda.max_memory_allocated (and max_memory_reserved) in its worker",
        }
    res["parity"] = parity_report(
        args.dtype,
        res["warmup"]["first_loss_rel_diff"],
        res["steps"]["samples_s"]["losses_pdu"],
        res["steps"]["samples_s"]["losses_torch"],
        res["eval"]["max_abs_avg_loss_diff"],
    )
    if args.fsdp:
        log("FSDP bytes per device (subprocess, 8 fake CPU devices, JAX_PLATFORMS=cpu)")
        res["fsdp"] = run_fsdp_subprocess(folder, 8)
    res["loadavg_end"] = loadavg()
    res["wall_s"] = time.time() - t_start
    res["goals"] = goal_table(res)
    return res


def goal_table(res: dict) -> list[dict]:
    """The four goals, computed the same way whatever the device and dtype; (3) is over the matmul peak in
    the run's compute dtype on its device."""
    short = precision_recipe(res.get("dtype", "float32"), res.get("device", "cpu"))["short"]
    rows = [
        ("(1) PDU step tokens/s, ours / PyTorch", res["steps"]["speedup_pdu_vs_torch"], ">=", 1.5),
        ("(2) PDU step time / GradDiff step time", res["steps"]["pdu_over_graddiff"], "<=", 1.03),
        (f"(3) model FLOP/s / {short} matmul peak (best)", res["mfu"]["fraction_of_best_peak"], ">=", 0.5),
        ("(4) TOFU eval time, PyTorch / ours", res["eval"]["speedup_total"], ">=", 2.0),
    ]
    return [
        {"goal": g, "value": v, "target": f"{op} {t}", "met": bool(v >= t if op == ">=" else v <= t)}
        for g, v, op, t in rows
    ]
