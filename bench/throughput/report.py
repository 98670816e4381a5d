"""The results as Markdown (`markdown`) and their files (`write_results`: throughput.json and
throughput.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from bench.throughput.device import precision_recipe


def _f(x: float, nd: int = 2) -> str:
    """`x` with `nd` decimals."""
    return f"{x:.{nd}f}"


def _md_header(res: dict) -> list[str]:
    m, ti, st = res["machine"], res["torch_info"], res["steps"]
    v = m["versions"]
    device, dtype = res.get("device", "cpu"), res.get("dtype", "float32")
    prec = res.get("precision") or precision_recipe(dtype, device)
    if device == "gpu":
        title = f"GPU: {m.get('jax_device_kind') or ti.get('cuda_device_name')}, {dtype}"
        machine = (
            f"Machine: GPU {m.get('jax_device_kind')} (JAX) / {ti.get('cuda_device_name')} (torch, CUDA "
            f"{ti.get('cuda_version')}); host {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; jax "
            f"{v['jax']}, flax {v['flax']}, torch {v['torch']}, transformers {v['transformers']}; "
            f"XLA_FLAGS=`{m['xla_flags'] or '(none)'}`, XLA_PYTHON_CLIENT_PREALLOCATE="
            f"{m.get('xla_python_client_preallocate')}. PyTorch on `{res.get('torch_device', 'cuda')}`, "
            f"attention `{ti['attn_implementation']}`, {ti['torch_threads']} host threads (its default)."
        )
        load = (
            f"Host load average (1/5/15 min): start {res['loadavg_start']}, end {res['loadavg_end']}. "
            "Timings are medians of interleaved repetitions; every timer waits for the GPU "
            "(block_until_ready or a host copy on our side, torch.cuda.synchronize or a host copy on "
            "PyTorch's)."
        )
    else:
        title = "CPU" if dtype == "float32" else f"CPU, {dtype}"
        machine = (
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; jax {v['jax']}, "
            f"flax {v['flax']}, torch {v['torch']}, transformers {v['transformers']}; "
            f"XLA_FLAGS=`{m['xla_flags'] or '(none)'}`. PyTorch: {ti['torch_threads']} threads, "
            f"OMP_WAIT_POLICY {ti['omp_wait_policy']}, attention `{ti['attn_implementation']}`."
            + (" fp32 on both sides." if dtype == "float32" else "")
        )
        load = (
            f"Load average (1/5/15 min): start {res['loadavg_start']}, end {res['loadavg_end']}; "
            f"1-min load after each step repetition {st['samples_s']['loadavg']}. The 2 cores are shared "
            "with other jobs (our own process adds about 2). Timings are medians of interleaved repetitions."
        )
    L = [
        f"# Throughput: cel_jax vs PyTorch/transformers ({title})",
        "",
        f"Regenerate (from the repository root; {res['wall_s'] / 60:.0f} min in this run):",
        "",
        f"    {res['command']}",
        "",
        machine,
        "",
    ]
    if device == "gpu" or dtype != "float32":
        L += [
            f"Precision ({dtype}, device {device}). Ours: {prec['ours']}. PyTorch: {prec['torch']}.",
            "",
        ]
    L += [load, ""]
    if res.get("skipped"):
        L += ["Skipped here: " + "; ".join(f"`{k}` ({r})" for k, r in res["skipped"].items()) + ".", ""]
    L += [
        "## Goals",
        "",
        "| goal | reached | target | met |",
        "|---|---|---|---|",
    ]
    L += [
        f"| {g['goal']} | {_f(g['value'], 3)} | {g['target']} | {'yes' if g['met'] else 'no'} |"
        for g in res["goals"]
    ]
    if "omp_compare" in res:
        k = res["omp_compare"]["default_over_main"]
        L += [
            "",
            "(1) is against PyTorch with OMP_WAIT_POLICY=PASSIVE. With libgomp's default policy its "
            f"forwards were x{_f(k)} slower in this run, which would put (1) near "
            f"x{_f(st['speedup_pdu_vs_torch'] * k, 1)} (an estimate from forwards only). (3) uses the best "
            "matmul peak seen in the run; the load moves it.",
        ]
    return L


def _md_steps(res: dict) -> list[str]:
    st, sh, c, w, hd = res["steps"], res["shapes"], res["compile"], res["warmup"], res["steps"]["loss_head"]
    L = [
        "",
        f"## Unlearning step (M=1, B={sh['B_forget']} forget + {sh['B_retain']} retain rows, T={sh['T']}: "
        f"{sh['tokens']} tokens per step)",
        "",
        "| | median s/step | tokens/s | samples (s) |",
        "|---|---|---|---|",
    ]
    names = {
        "pdu": "ours, PDU (primal_dual)",
        "grad_diff": "ours, GradDiff (scalarized)",
        "torch": "PyTorch PDU",
    }
    for k, name in names.items():
        xs = ", ".join(_f(x, 1) for x in st["samples_s"][k])
        L.append(f"| {name} | {_f(st['median_s'][k])} | {_f(st['tokens_per_s'][k], 1)} | {xs} |")
    lp = [round(x, 4) for x in st["samples_s"]["losses_pdu"]]
    lt = [round(x, 4) for x in st["samples_s"]["losses_torch"]]
    L += [
        "",
        f"Compile (not in the step times): PDU trace+lower {_f(c['pdu']['trace_lower_s'], 1)} s + XLA "
        f"compile {_f(c['pdu']['compile_s'], 1)} s; GradDiff {_f(c['grad_diff']['trace_lower_s'], 1)} + "
        f"{_f(c['grad_diff']['compile_s'], 1)} s. First runs: PDU {_f(w['pdu_first_step_s'], 1)} s, "
        f"PyTorch {_f(w['torch_first_step_s'], 1)} s.",
        "",
        f"Same Lagrangian: first-step loss ours {w['pdu_first_loss']:.6g}, PyTorch "
        f"{w['torch_first_loss']:.6g} (relative difference {w['first_loss_rel_diff']:.1e}).",
        f"The two sides then step in lockstep from the same weights and batch: losses ours {lp}, "
        f"PyTorch {lt}.",
        *_md_parity(res, ("first_loss_rel", "lockstep_loss_rel")),
        "",
        f"PDU / GradDiff: ratio of medians {_f(st['pdu_over_graddiff'], 3)}, median of paired ratios "
        f"{_f(st['pdu_over_graddiff_paired'], 3)}. The steps differ only in the forget term on the logits; "
        f"its value and gradient alone take {hd['pdu_s'] * 1e3:.0f} ms (logit margin) vs "
        f"{hd['grad_diff_s'] * 1e3:.0f} ms (CE) on [{sh['B_forget']}, {sh['T']}, V] logits, so the expected "
        f"ratio is {_f(hd['estimated_ratio'], 4)}; XLA's flop counts of the two compiled steps differ by a "
        f"factor {_f(hd['xla_flops_ratio'], 4)}.",
    ]
    return L


def _md_flops(res: dict) -> list[str]:
    mf, fl, pk = res["mfu"], res["flops"], res["matmul_peak_gflops"]
    st, tp = res["steps"], res["steps"]["torch_parts_median_s"]
    device = res.get("device", "cpu")
    short = precision_recipe(res.get("dtype", "float32"), device)["short"]
    sizes = res.get("mm_sizes") or res["args"]["mm_sizes"]
    where = " on the GPU" if device == "gpu" else ""
    n_in = res.get("mm_inner", 1)
    inner = f" of {n_in} back-to-back matmuls per timing" if n_in > 1 else ""
    L = [
        "",
        "## Model FLOP/s and where the time goes",
        "",
        f"Formula: {res['flops_formula']}; N = {fl['n_params']:,}. One step = {fl['total'] / 1e9:.1f} GFLOP "
        f"({fl['dense'] / 1e9:.1f} dense + {fl['attention'] / 1e9:.1f} attention); XLA's cost analysis of "
        f"the compiled PDU step counts {mf['xla_cost_analysis_flops'] / 1e9:.1f} GFLOP.",
        "",
        f"{short} matmul peak (jitted jnp.matmul{where}, square sizes {sizes}, best of 3 per size{inner}, "
        f"measured {len(pk['samples']['jax'])} times through the run): best {_f(pk['jax']['best'], 1)} "
        f"GFLOP/s, median {_f(pk['jax']['median'], 1)}; torch's matmul: best {_f(pk['torch']['best'], 1)}.",
        "",
        f"Achieved: ours {_f(mf['achieved_gflops_pdu'], 1)} GFLOP/s = {_f(mf['fraction_of_best_peak'], 3)} "
        f"of the best peak ({_f(mf['fraction_of_median_peak'], 3)} of the median); PyTorch "
        f"{_f(mf['achieved_gflops_torch'], 1)} GFLOP/s = {_f(mf['torch_fraction_of_torch_best_peak'], 3)} of "
        "torch's best matmul. "
        + (
            f"Counting the FLOPs XLA's cost analysis gives for our compiled step (the work done; the formula "
            f"counts the LM head on every row): {_f(mf['xla_gflops_per_s_pdu'], 1)} GFLOP/s = "
            f"{_f(mf['xla_fraction_of_best_peak'], 3)} of the best peak."
            if "xla_gflops_per_s_pdu" in mf
            else ""
        ),
        "",
        f"PyTorch step (median {_f(st['median_s']['torch'])} s): forward {_f(tp['forward_s'])} s, backward "
        f"{_f(tp['backward_s'])} s, clip + AdamW {_f(tp['optimizer_s'])} s.",
    ]
    if "breakdown_ours" in res:
        b = res["breakdown_ours"]
        L.append(
            f"Ours (median {_f(b['step_s'])} s; pieces jitted separately): forward (both batches + losses) "
            f"{_f(b['forward_s'])} s, clip + AdamW {_f(b['optimizer_s'])} s, backward ≈ step − both = "
            f"{_f(b['backward_s_estimate'])} s; host dispatch {b['dispatch_s'] * 1e3:.1f} ms."
        )
    if "all_rows" in res:
        ar = res["all_rows"]
        caps = ", ".join(f"{p} {c}" for p, c in ar["capacity"].items())
        L.append(
            'LM head on answer rows (our default, `lm_head_rows="answers"`, unlearning/answer_rows.py) vs on '
            f'all rows (`lm_head_rows="all"`): {_f(ar["median_s"]["answers"])} vs '
            f"{_f(ar['median_s']['all'])} s/step in one interleaved phase "
            f"(x{_f(ar['speedup_answers_vs_all'])}); rows kept per sequence: {caps} of "
            f"{ar['rows_per_sequence'] - 1}; first losses agree to "
            f"{ar['first_loss_rel_diff']:.1e} (relative); compile of the all-rows step "
            f"{_f(ar['compile']['compile_s'], 1)} s."
        )
    if "omp_compare" in res:
        oc = res["omp_compare"]
        L.append(
            f"PyTorch thread policy: one no-grad forward of the retain batch takes {_f(oc['main_s'])} s with "
            f"OMP_WAIT_POLICY={oc['main_policy']} and {_f(oc['default_policy_s'])} s with libgomp's default "
            f"(spin-then-sleep), {oc['threads']} threads both (x{_f(oc['default_over_main'])})."
        )
    return L


def _md_eval(res: dict) -> list[str]:
    ev = res["eval"]
    a, md, fc = ev["agreement"], ev["median_s"], ev["first_call_s"]
    rows = (("forward (probabilities)", "forward"), ("greedy generation", "generate"))
    L = [
        "",
        f"## TOFU eval ({ev['items']} forget01 questions, chat template, greedy, max_new_tokens "
        f"{ev['max_new_tokens']}, one batch)",
        "",
        "| | ours median s | PyTorch median s | speed-up |",
        "|---|---|---|---|",
    ]
    for name, k in rows:
        L.append(
            f"| {name} | {_f(md['ours_' + k], 3)} | {_f(md['torch_' + k], 3)} | {_f(ev['speedup_' + k])} |"
        )
    ours_t, torch_t = md["ours_forward"] + md["ours_generate"], md["torch_forward"] + md["torch_generate"]
    L += [
        f"| total | {_f(ours_t, 3)} | {_f(torch_t, 3)} | {_f(ev['speedup_total'])} |",
        "",
        f"First calls (compile / warm-up): ours forward {_f(fc['ours_forward_s'], 1)} s, generate "
        f"{_f(fc['ours_generate_s'], 1)} s; PyTorch forward {_f(fc['torch_forward_s'], 1)} s, generate "
        f"{_f(fc['torch_generate_s'], 1)} s.",
        "",
        f"Greedy token ids: {_f(a['exact'] * 100, 1)}% of the sequences identical, "
        f"{_f(a['token'] * 100, 1)}% of the tokens (common prefix / longer length);",
        f"first divergence per item {a['first_divergence']}. "
        f"Generated tokens: ours {ev['generated_tokens_ours']}, PyTorch {ev['generated_tokens_torch']}. "
        f"Max |mean answer NLL, ours − PyTorch| over items: {ev['max_abs_avg_loss_diff']:.1e}.",
        *_md_parity(res, ("avg_nll_abs",)),
    ]
    return L


_PARITY_NAMES = {
    "first_loss_rel": "first-step loss (relative)",
    "lockstep_loss_rel": "lockstep losses (max relative)",
    "avg_nll_abs": "mean answer NLL (max absolute)",
}


def _md_parity(res: dict, keys: Sequence[str]) -> list[str]:
    """One line: the parity values against the dtype's thresholds (none for results without them)."""
    par = res.get("parity")
    if not par:
        return []
    bits = []
    for k in keys:
        v, tol, ok = par["value"].get(k), par["tolerance"][k], par["within"].get(k)
        verdict = "n/a" if ok is None else ("within" if ok else "OUTSIDE")
        bits.append(f"{_PARITY_NAMES[k]} {'n/a' if v is None else f'{v:.1e}'} vs {tol:.0e}: {verdict}")
    return [
        f"Parity against the {par['dtype']} thresholds (reported, not asserted): " + "; ".join(bits) + "."
    ]


def _md_memory(res: dict) -> list[str]:
    mem = res["memory_mb"]
    o = mem["ours_phases"]
    L = [
        "",
        "## Peak host memory (peak RSS = VmHWM, MB; each side in its own process)",
        "",
        "| | after load | through eval | through training (one PDU state) | end |",
        "|---|---|---|---|---|",
        f"| ours | {o['model_loaded']:.0f} | {mem['ours_peak_through_eval']:.0f} | "
        f"{mem['ours_peak_one_training_state']:.0f} | {mem['ours_peak_end']:.0f} (+ the GradDiff state) |",
        f"| PyTorch | {mem['torch_after_load']:.0f} | {mem['torch_peak_through_eval']:.0f} | "
        f"{mem['torch_peak_training']:.0f} | {mem['torch_peak_training']:.0f} |",
        "",
        f"Ours after imports + tokenizer (transformers imports torch): {o['imports_and_tokenizer']:.0f} MB.",
    ]
    dm = res.get("device_memory_mb")
    if dm:
        mb = lambda x: "n/a" if x is None else f"{x:.0f}"  # noqa: E731
        peak = lambda k: (dm["ours_phases"].get(k) or {}).get("peak_mb")  # noqa: E731
        L += [
            "",
            "## Peak GPU memory (MB; peaks so far at each point, each side's own allocator)",
            "",
            "| | after load | through eval | through training (one PDU state) | end |",
            "|---|---|---|---|---|",
            f"| ours (JAX peak_bytes_in_use) | {mb(peak('model_loaded'))} | {mb(peak('after_eval'))} | "
            f"{mb(peak('after_pdu_warmup'))} | {mb(peak('end'))} (+ the GradDiff state) |",
            f"| PyTorch (max_memory_allocated) | {mb(dm['torch_after_load'])} | "
            f"{mb(dm['torch_peak_through_eval'])} | {mb(dm['torch_peak'])} | {mb(dm['torch_peak'])} "
            f"(reserved {mb(dm['torch_peak_reserved'])}) |",
            "",
            "Our peak includes the matmul-peak operands; JAX does not preallocate here "
            f"(XLA_PYTHON_CLIENT_PREALLOCATE={res['machine'].get('xla_python_client_preallocate')}).",
        ]
    fs = res.get("fsdp")
    if fs and "error" not in fs:
        rep = max(fs["replicated_per_device"].values())
        mib = lambda b: f"{b / 2**20:.1f} MiB"
        L += [
            "",
            f"## FSDP on {fs['devices']} fake CPU devices (mesh (1, {fs['devices']}, 1))",
            "",
            f"Parameter bytes per device: replicated {mib(rep)}, FSDP max {mib(fs['fsdp_max_per_device'])} "
            f"(ideal {mib(fs['ideal_per_device'])}), ratio {rep / fs['fsdp_max_per_device']:.2f}; "
            f"{fs['replicated_leaves_under_fsdp']} leaves stay replicated under FSDP "
            f"({fs['replicated_bytes_under_fsdp'] / 2**10:.1f} KiB).",
        ]
    elif fs:
        L += ["", f"FSDP subprocess failed: {fs['error'][-300:]}"]
    return L


def markdown(res: dict) -> str:
    """throughput.md: header and goals, the step, FLOP/s, eval and memory sections."""
    parts = _md_header(res) + _md_steps(res) + _md_flops(res) + _md_eval(res) + _md_memory(res)
    return "\n".join(parts) + "\n"


def write_results(res: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """throughput.json (the whole results dict) and throughput.md in `out_dir`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "throughput.json", out / "throughput.md"
    j.write_text(json.dumps(res, indent=2, default=str) + "\n")
    m.write_text(markdown(res))
    return j, m
