"""`python -m bench.throughput`: our PDU step, GradDiff step and TOFU eval against PyTorch/transformers,
side by side in one run on this machine (interleaved repetitions, medians), plus FSDP bytes per device.

Axes: M micro-batches, B rows per micro-batch (forget or retain), T padded length, D model, V vocab,
L layers, N parameters.

Measured (see bench/README.md, section "throughput"):
  (1) tokens/s of our jitted PDU step (unlearning.step.train_step, method pdu, solver primal_dual) vs a
      PyTorch step with the same Lagrangian on transformers' LlamaForCausalLM + torch.optim.AdamW;
  (2) PDU step time / GradDiff (scalarised) step time, same shapes;
  (3) model FLOP/s of our step, 6·N·tokens + 12·L·T·(n_heads·head_dim)·tokens, over a jitted
      jnp.matmul peak in the compute dtype, on the same device, measured in the same run;
  (4) TOFU eval: probabilities forward + greedy generation, ours vs transformers forward / `generate`,
      with the agreement of the generated token ids;
  (5) peak host memory (peak RSS, VmHWM) of each side: the PyTorch side runs in its own process;
  (6) parameter bytes per device, FSDP mesh (1, 8, 1) vs replicated, on 8 fake CPU devices (subprocess).
Only numpy and the standard library are imported at module level, so the PyTorch worker never loads JAX
and the FSDP subprocess never loads torch.

`--device {auto,cpu,gpu}` (auto: the GPU when JAX's default backend is one) and `--dtype {float32,bfloat16}`
(float32: everything fp32 on both sides; bfloat16: each side's standard mixed precision, fp32 master weights
and AdamW, bf16 matmuls, fp32 losses; see `precision_recipe`). The device is decided in the parent; the
PyTorch worker gets the torch device string ("cuda" or "cpu"). CPU-only phases (the OpenMP wait-policy
comparison, torch thread settings) are skipped on a GPU with the reason recorded in the results.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = -100
DEFAULT_MODEL = "smollm2-135m-instruct"


# ============================================================================================ small helpers
def maxrss_mb() -> float:
    """Peak resident set size of this process so far, in MB: VmHWM of /proc/self/status where it exists
    (the peak of this process's own address space), else ru_maxrss (KiB on Linux). In a spawned child,
    ru_maxrss starts at the parent's RSS at fork time (the kernel carries it over at exec); VmHWM does not."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


# ============================================================================================ device, dtype
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cpu", "gpu")
TORCH_DEVICE = {"cpu": "cpu", "gpu": "cuda"}
MM_SIZES = {"cpu": (1024, 2048), "gpu": (4096, 8192)}  # square matmul sizes of the peak, per device
MM_INNER = {"cpu": 1, "gpu": 10}  # matmuls per timed call: one GPU matmul is too short to time alone
# Parity thresholds, reported (never asserted): first-step loss and lockstep losses (relative), per-item
# mean answer NLL (absolute). fp32: the two implementations agree to rounding. bf16: each side rounds
# its matmul inputs (and PyTorch's autocast its logits) to 8 mantissa bits, ~4e-3 relative per value.
PARITY_TOL = {
    "float32": {"first_loss_rel": 1e-4, "lockstep_loss_rel": 1e-3, "avg_nll_abs": 1e-3},
    "bfloat16": {"first_loss_rel": 3e-2, "lockstep_loss_rel": 5e-2, "avg_nll_abs": 5e-2},
}
CPU_ONLY_REASON = "CPU-only: on a GPU the host threads only launch kernels"


def prepare_jax_env(requested: str, environ=os.environ) -> None:
    """Environment for JAX, set before the parent first imports it: --device cpu hides any GPU from JAX
    (JAX_PLATFORMS=cpu); otherwise JAX does not preallocate most of the GPU's memory (the PyTorch worker
    shares the GPU, and each side's peak is read from its own allocator). Explicit settings win."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    if requested == "cpu":
        environ["JAX_PLATFORMS"] = "cpu"
    else:
        environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def resolve_device(requested: str, jax_backend: str) -> str:
    """The device, "cpu" or "gpu", from --device and jax.default_backend() ("gpu" for CUDA and ROCm)."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    if requested == "auto":
        return "gpu" if jax_backend == "gpu" else "cpu"
    if requested != jax_backend:
        hint = "set JAX_PLATFORMS=cpu" if requested == "cpu" else "install jax with CUDA (jax[cuda12|13])"
        raise ValueError(f"--device {requested} but JAX's default backend is {jax_backend!r} ({hint})")
    return requested


def mm_sizes_for(device: str, sizes: Sequence[int] | None) -> list[int]:
    """--mm-sizes when given, else the device's default (large on a GPU, where small matmuls idle it)."""
    out = list(sizes) if sizes else list(MM_SIZES[device])
    if any(int(n) < 1 for n in out):
        raise ValueError(f"--mm-sizes must be >= 1, got {out}")
    return [int(n) for n in out]


def precision_recipe(dtype: str, device: str) -> dict:
    """What each side computes in, as written into the results."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    short = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
    if dtype == "float32":
        ours = "fp32 throughout (model.dtype=float32, param_dtype=float32)"
        torch = "fp32 throughout (no autocast)"
        if device == "gpu":
            ours += "; JAX's default matmul precision, which may use TF32 on this GPU"
            torch += "; torch's default fp32 matmuls (TF32 off)"
    else:
        ours = (
            "mixed: fp32 parameters, AdamW state, losses and λ; matmuls in bf16 with fp32 accumulation "
            "(model.dtype=bfloat16, param_dtype=float32, as cel_jax's training configs); norms, RoPE, "
            "softmax, residual stream and logits fp32; bf16 KV cache in generation"
        )
        torch = (
            f"mixed: fp32 weights and fp32 AdamW; forwards (and `generate`) under "
            f"torch.autocast('{TORCH_DEVICE[device]}', torch.bfloat16), so matmuls and SDPA run in bf16 "
            "and the logits come out bf16; losses computed in fp32 (.float())"
        )
    return {"dtype": dtype, "short": short, "device": device, "ours": ours, "torch": torch}


def parity_report(dtype: str, first_loss_rel: float, losses_ours, losses_torch, avg_nll_abs: float) -> dict:
    """Parity of the two sides against the dtype's thresholds (PARITY_TOL): reported, not asserted."""
    tol = PARITY_TOL[dtype]
    a, b = np.asarray(losses_ours, float), np.asarray(losses_torch, float)
    lock = (
        float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))) if a.size and a.shape == b.shape else None
    )
    vals = {"first_loss_rel": first_loss_rel, "lockstep_loss_rel": lock, "avg_nll_abs": avg_nll_abs}
    within = {k: (None if v is None or not np.isfinite(v) else bool(v <= tol[k])) for k, v in vals.items()}
    return {"dtype": dtype, "tolerance": dict(tol), "value": vals, "within": within}


def jax_device_memory() -> dict | None:
    """Peak / current bytes of JAX's allocator on device 0 in MB (GPU), or None where it has no stats."""
    try:
        import jax

        st = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports memory
        return None
    if not st:
        return None
    mb = lambda k: round(st[k] / 2**20, 1) if st.get(k) is not None else None  # noqa: E731
    return {
        "peak_mb": mb("peak_bytes_in_use"),
        "in_use_mb": mb("bytes_in_use"),
        "limit_mb": mb("bytes_limit"),
    }


def machine_info() -> dict:
    """CPU model, cores, memory, library versions and XLA flags (JAX is imported here); the GPU's kind
    as JAX names it, when JAX runs on one."""
    import jax

    cpu = cpu_name()
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem_gb = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for name in (
        "jaxlib",
        "flax",
        "optax",
        "numpy",
        "transformers",
        "torch",
        "jax-cuda12-plugin",
        "jax-cuda13-plugin",
    ):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not reported
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_device_kind": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "versions": versions,
    }


# ============================================================================================ FLOPs
def model_flops(cfg, n_rows: int, seq_len: int) -> dict:
    """Training FLOPs of one step over n_rows padded rows of seq_len tokens (fwd + bwd = 3x fwd).

    per token: 6·N (every parameter in one multiply-add forward, two backward; the tied embedding counts
    once, as the LM-head matmul) + 12·L·T·(n_heads·head_dim) (QK^T and PV over the full T×T score
    matrix, which both implementations compute; causal masking does not skip work).
    """
    if n_rows < 1 or seq_len < 1:
        raise ValueError(f"n_rows and seq_len must be >= 1, got {n_rows}, {seq_len}")
    n_params = int(cfg.num_params)
    tokens = n_rows * seq_len
    dense = 6 * n_params * tokens
    attn = 12 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim * tokens
    return {"n_params": n_params, "tokens": tokens, "dense": dense, "attention": attn, "total": dense + attn}


# ============================================================================================ data
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def _pad(items: Sequence[dict], pad_id: int, length: int) -> dict[str, np.ndarray]:
    from cel_jax.data import pad_items

    return pad_items(items, pad_id, length=length)


def train_batch(
    tok, forget_rows: Sequence[dict], retain_rows: Sequence[dict], batch: int, seq_len: int
) -> dict:
    """{"forget": {...}, "retain": {...}} of int32 [1, B, T] arrays (M = 1), right padded to seq_len, labels
    IGNORE on the prompt, formatted exactly like training (cel_jax.data.encode_qa, chat template)."""
    from cel_jax import data

    pad = data.pad_id_of(tok)
    out = {}
    for name, rows in (("forget", forget_rows), ("retain", retain_rows)):
        items = []
        for r in rows:
            it = data.encode_qa(tok, r["question"], r["answer"])
            if len(it["input_ids"]) <= seq_len:
                items.append(it)
            if len(items) == batch:
                break
        if len(items) < batch:
            raise ValueError(f"only {len(items)} {name} rows fit in seq_len={seq_len}; need batch={batch}")
        part = _pad(items, pad, seq_len)
        out[name] = {k: part[k][None].astype(np.int32) for k in ("input_ids", "attention_mask", "labels")}
    return out


def eval_items(tok, rows: Sequence[dict]) -> tuple[list[dict], list[list[int]]]:
    """(probability items with labels, generation prompts) for TOFU rows, chat template as the eval."""
    from cel_jax import data

    items = [data.encode_qa(tok, r["question"], r["answer"]) for r in rows]
    prompts = [data.encode_qa(tok, r["question"], r["answer"], generate=True)["input_ids"] for r in rows]
    return items, prompts


def agreement(ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]) -> dict:
    """exact: share of identical sequences; token: common-prefix tokens / longer length, summed over items;
    first_divergence: per item, the index of the first differing token (None when identical)."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} vs {len(theirs)} sequences")
    same, pref, total, first = 0, 0, 0, []
    for a, b in zip(ours, theirs, strict=True):
        a, b = list(a), list(b)
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        same += a == b
        pref += k
        total += max(len(a), len(b))
        first.append(None if a == b else k)
    return {
        "exact": same / max(len(ours), 1),
        "token": pref / total if total else 1.0,
        "first_divergence": first,
    }


# ============================================================================================ JAX side
def jax_matmul_peak(
    sizes: Sequence[int] = (1024, 2048), reps: int = 3, dtype: str = "float32", inner: int = 1
) -> dict:
    """Best GFLOP/s of a jitted square jnp.matmul in `dtype` on JAX's default device, per size; `peak` is
    the best over sizes. One timing = `inner` matmuls dispatched back to back, then waited for."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(jnp.matmul)
    dt = jnp.dtype(dtype)
    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), dt)
        b = jax.random.normal(jax.random.key(1), (n, n), dt)
        f(a, b).block_until_ready()

        def once(a=a, b=b):
            for _ in range(inner - 1):
                f(a, b)
            return f(a, b).block_until_ready()  # one stream: the last one ends after all the others

        best = min(timed(once)[1] for _ in range(reps))
        out[str(n)] = 2 * n**3 * inner / best / 1e9
        del a, b
    return {"gflops": out, "peak": max(out.values()), "dtype": dtype, "inner": inner}


def _unlearn_cfg(method: str, solver: str, lam0: float, eps: float, dual_lr: float):
    from cel_jax import config_base

    cfg = config_base.unlearn_config()
    cfg.method, cfg.solver = method, solver
    # the authors' Lagrangian L_f + λ (L_r − ε) with gda, as the PyTorch reference step computes it
    cfg.dual = config_base.authors_dual(lam0=lam0, eps=eps, lr=dual_lr, mode="step")
    return cfg


def answer_row_spec(spec, batch: dict, lm_head_rows: str):
    """`spec` with the answer-row capacities the training loop would pick for this batch's sequences
    (cel_jax.training.train.answer_row_parts / answer_rows.plan), or none with lm_head_rows="all"."""
    import ml_collections

    from cel_jax.training import train
    from cel_jax.unlearning import answer_rows

    parts = train.answer_row_parts(ml_collections.ConfigDict({"lm_head_rows": lm_head_rows}), spec)
    labels = {p: part["labels"].reshape(-1, part["labels"].shape[-1]) for p, part in batch.items()}
    return spec.replace(answer_rows=answer_rows.plan(parts, labels))


def make_jax_step(
    model,
    method: str,
    solver: str,
    batch: dict,
    *,
    lam0: float = 1.0,
    eps: float = 1.0,
    dual_lr: float = 1.0,
    params=None,
    lm_head_rows: str = "answers",
) -> dict:
    """The training loop's step, wired as cel_jax.training.train.run does: make_spec (+ answer-row plan),
    make_optimizer, create_state, jax.jit(train_step, donate_argnums=0). `params` (pure dict) defaults to
    the model's own arrays."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cel_jax.training import optim, train
    from cel_jax.unlearning import step as step_lib

    cfg = _unlearn_cfg(method, solver, lam0, eps, dual_lr)
    spec = answer_row_spec(train.make_spec(cfg, model.cfg, "unlearn"), batch, lm_head_rows)
    graphdef, params_state = nnx.split(model, nnx.Param)
    if params is None:
        params = nnx.to_pure_dict(params_state)
    tx = optim.make_optimizer(cfg.optim, total_steps=10_000, warmup_steps=0)
    lam = lam0 if solver == "primal_dual" else 0.0
    state = train.create_state(params, tx, lam, eps, cfg.seed, spec.dual_rule)
    hp = {"dual_active": jnp.bool_(True)}
    fn = jax.jit(
        lambda s, b, hp, r, c: step_lib.train_step(s, b, hp, r, c, graphdef=graphdef, tx=tx, spec=spec),
        donate_argnums=0,
    )
    return {"fn": fn, "state": state, "hp": hp, "spec": spec, "graphdef": graphdef, "tx": tx}


def compile_step(st: dict, batch: dict) -> dict:
    """Trace+lower and XLA-compile separately (timed); st["compiled"] replaces the lazy jit call."""
    import jax

    b = jax.device_put(batch)
    lowered, t_lower = timed(lambda: st["fn"].lower(st["state"], b, st["hp"], None, {}))
    compiled, t_comp = timed(lowered.compile)
    st["compiled"] = compiled
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return {"trace_lower_s": t_lower, "compile_s": t_comp, "xla_flops": flops}


def run_step(st: dict, batch: dict) -> tuple[float, float, float]:
    """One optimizer step as the loop runs it (host batch -> device, dispatch, wait, fetch the loss).
    Returns (seconds, dispatch seconds, loss)."""
    import jax

    t0 = time.perf_counter()
    state, metrics = st["compiled"](st["state"], jax.device_put(batch), st["hp"], None, {})
    t_dispatch = time.perf_counter() - t0
    jax.block_until_ready(state)
    loss = float(metrics["loss"])
    st["state"] = state
    return time.perf_counter() - t0, t_dispatch, loss


def jax_breakdown(st: dict, batch: dict, reps: int) -> dict:
    """Forward only (the objective of micro-batch 0, no gradient) and optimizer only (optax update +
    apply_updates on gradient-shaped arrays), each jitted separately; backward ≈ step - the two."""
    import jax
    import optax

    from cel_jax.unlearning import answer_rows
    from cel_jax.unlearning import step as step_lib

    spec, graphdef, tx = st["spec"], st["graphdef"], st["tx"]
    mb = jax.device_put(jax.tree.map(lambda x: x[0], batch))
    mb = answer_rows.compact_batch(mb, spec.answer_rows)  # as train_step does per micro-batch
    s = st["state"]
    fwd = jax.jit(lambda p, mb, lam, eps: step_lib.objective(p, lam, eps, mb, {}, {}, graphdef, spec)[0])

    def opt_fn(g, o, p):
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    # donated, as in the step (the train state is donated): the update runs in place, like torch's AdamW
    opt = jax.jit(opt_fn, donate_argnums=(1, 2))
    out: dict[str, Any] = {}
    _, out["forward_first_call_s"] = timed(lambda: fwd(s.params, mb, s.dual.lam, s.eps).block_until_ready())
    # steady state, as in training: one copy of the state, then each update consumes the previous one's
    # outputs (timing fresh copies each time also timed their new allocations: ~1.3 s vs ~0.7 s here)
    o, p = jax.block_until_ready((jax.tree.map(jnp_copy, s.opt_state), jax.tree.map(jnp_copy, s.params)))
    (p, o), out["optimizer_first_call_s"] = timed(lambda: jax.block_until_ready(opt(s.params, o, p)))
    f_t, o_t = [], []
    for _ in range(reps):
        f_t.append(timed(lambda: fwd(s.params, mb, s.dual.lam, s.eps).block_until_ready())[1])
        (p, o), t = timed(lambda o=o, p=p: jax.block_until_ready(opt(s.params, o, p)))
        o_t.append(t)
    out["forward_s"], out["optimizer_s"] = median(f_t), median(o_t)
    return out


def loss_head_times(batch: int, seq_len: int, vocab: int, reps: int = 5) -> dict:
    """Value and gradient w.r.t. [B, T, V] logits of the forget term alone, PDU's logit margin vs GradDiff's
    negated CE (unlearning.methods.forget_loss), jitted, interleaved: the only work in which the two steps
    differ (both have the same retain CE and the same model). Medians in seconds."""
    import jax
    import jax.numpy as jnp

    from cel_jax.unlearning import methods

    k1, k2 = jax.random.split(jax.random.key(0))
    logits_BTV = 3.0 * jax.random.normal(k1, (batch, seq_len, vocab), jnp.float32)
    labels_BT = jax.random.randint(k2, (batch, seq_len), 0, vocab)
    labels_BT = labels_BT.at[:, : seq_len // 2].set(IGNORE)

    def head(name):
        loss = lambda z: methods.forget_loss(name, {"forget_logits": z, "forget_labels": labels_BT})[0]
        return jax.jit(jax.value_and_grad(loss))

    fns = {"pdu": head("pdu"), "grad_diff": head("grad_diff")}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        jax.block_until_ready(f(logits_BTV))
    for r in range(reps):
        for k in _rotate(list(fns), r):
            times[k].append(timed(lambda k=k: jax.block_until_ready(fns[k](logits_BTV)))[1])
    out = {f"{k}_s": median(v) for k, v in times.items()}
    out["delta_s"] = out["pdu_s"] - out["grad_diff_s"]
    return out


def jax_eval(model, items, prompts, pad_id: int, eos_ids, max_new_tokens: int) -> dict:
    """The evaluation's own paths: forward.item_stats (probabilities) and forward.generate_ids."""
    from cel_jax.evaluation import forward

    n = len(items)
    stats, t_f = timed(lambda: forward.item_stats(model, items, pad_id, batch_size=n, progress=False))
    outs, t_g = timed(
        lambda: forward.generate_ids(
            model,
            prompts,
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=max_new_tokens,
            batch_size=n,
            progress=False,
        )
    )
    return {"forward_s": t_f, "generate_s": t_g, "avg_loss": [s["avg_loss"] for s in stats], "ids": outs}


def fsdp_param_bytes(model, fsdp: int) -> dict:
    """Parameter bytes on each device: replicated (every leaf put on a replicated sharding, counted and
    freed one at a time) vs FSDP mesh (1, fsdp, 1) via sharding.shard_model; from addressable_shards."""
    import jax
    from flax import nnx

    from cel_jax.scale import sharding

    mesh = sharding.make_mesh((1, fsdp, 1))
    devs = list(mesh.devices.flat)
    rep = sharding.replicated(mesh)
    replicated = {str(d): 0 for d in devs}
    for leaf in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))):
        arr = jax.device_put(leaf, rep)
        for sh in arr.addressable_shards:
            replicated[str(sh.device)] += sh.data.nbytes
        del arr  # freed now (delete() could free an aliased buffer of the model)
    sharding.shard_model(model, mesh)
    per_dev = {str(d): 0 for d in devs}
    unsharded = []
    for path, arr in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param))):
        for sh in arr.addressable_shards:
            per_dev[str(sh.device)] += sh.data.nbytes
        if arr.sharding.is_fully_replicated:
            unsharded.append((jax.tree_util.keystr(path), int(arr.nbytes)))
    total = sum(replicated.values()) // len(devs)
    return {
        "devices": len(devs),
        "total_param_bytes": total,
        "replicated_per_device": replicated,
        "fsdp_per_device": per_dev,
        "fsdp_max_per_device": max(per_dev.values()),
        "ideal_per_device": total / len(devs),
        "replicated_leaves_under_fsdp": len(unsharded),
        "replicated_bytes_under_fsdp": sum(b for _, b in unsharded),
    }


def fsdp_child_env(environ: dict, fsdp: int) -> dict:
    """The FSDP child's JAX settings, made before it imports JAX: CPU only (also on a GPU machine, where
    JAX would otherwise take the GPU) and `fsdp` host devices (XLA flag, replacing any count given)."""
    flags = [
        f for f in environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
    ]
    return {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={fsdp}"]),
    }


def _fsdp_child(conn, model_name: str, fsdp: int) -> None:
    """Subprocess: the CPU platform with `fsdp` devices, set before JAX loads (fsdp_child_env) and again in
    JAX's config before its backends start (in case the main module imported JAX), then fsdp_param_bytes."""
    try:
        os.environ.update(fsdp_child_env(dict(os.environ), fsdp))
        import jax

        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", fsdp)
        if jax.default_backend() != "cpu" or jax.device_count() != fsdp:
            raise RuntimeError(f"FSDP child: backend {jax.default_backend()}, {jax.device_count()} devices")
        from cel_jax.model import hf_io

        model, _ = hf_io.load_pretrained(model_name, with_tokenizer=False)
        out = fsdp_param_bytes(model, fsdp)
        out["maxrss_mb"] = maxrss_mb()
        conn.send(out)
    except Exception:  # noqa: BLE001 - reported to the parent
        conn.send({"error": traceback.format_exc()})


def run_fsdp_subprocess(model_name: str, fsdp: int = 8) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_fsdp_child, args=(child, model_name, fsdp))
    p.start()
    while not parent.poll(1.0):
        if not p.is_alive():
            return {"error": f"FSDP subprocess exited with code {p.exitcode}"}
    out = parent.recv()
    p.join()
    return out


# ============================================================================================ PyTorch side
def torch_setup(
    folder: str,
    *,
    threads: int,
    attn: str = "sdpa",
    lr: float = 1e-5,
    weight_decay: float = 0.01,
    device: str = "cpu",
):
    """transformers' LlamaForCausalLM (fp32 weights: also the master weights under bf16 autocast) on
    `device` + torch AdamW, matrices decayed (HF Trainer's grouping). threads=0 leaves torch's default."""
    import torch
    from transformers import LlamaForCausalLM

    if threads:
        torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn)
    model.to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    return model, opt


def torch_autocast(device: str, dtype: str):
    """The forward's context: nothing in float32, torch.autocast(device type, bfloat16) in bfloat16."""
    import contextlib

    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype != "bfloat16":
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def torch_sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), before a timer is read."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _to_torch(x, device: str):
    import torch

    return torch.from_numpy(np.asarray(x, np.int64)).to(device)


def torch_logit_margin(logits_BTV, labels_BT):
    """Our losses.logit_margin(shifted=True, average="token", tie="split") in torch (amax splits ties),
    in fp32 whatever the logits' dtype."""
    z = logits_BTV[:, :-1].float()
    mask = (labels_BT[:, 1:] != IGNORE).float()
    margin = (z.amax(-1) - z.mean(-1)) ** 2
    return (margin * mask).sum() / mask.sum().clamp(min=1.0)


def torch_pdu_step(
    model,
    opt,
    batch: dict,
    lam: float,
    eps: float,
    dual_lr: float,
    clip: float = 1.0,
    *,
    device: str = "cpu",
    dtype: str = "float32",
):
    """L = L_f + λ (L_r − ε) per micro-batch (mean over M), clip 1.0, AdamW, then λ ← [λ + η(L_r − ε)]_+
    (dual mode "step"). Forwards under torch_autocast(device, dtype), losses and the backward outside it
    in fp32. Returns (seconds, loss, new λ, {forward_s, backward_s, optimizer_s})."""
    import torch

    model.train()
    torch_sync(device)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    M = batch["forget"]["input_ids"].shape[0]
    t_f = t_b = 0.0
    losses, l_rs = [], []
    for m in range(M):
        ta = time.perf_counter()
        tens = {k: {n: _to_torch(v[m], device) for n, v in p.items()} for k, p in batch.items()}
        tf, tr = tens["forget"], tens["retain"]
        with torch_autocast(device, dtype):
            logits = model(input_ids=tf["input_ids"], attention_mask=tf["attention_mask"]).logits
        l_f = torch_logit_margin(logits, tf["labels"])
        with torch_autocast(device, dtype):  # transformers' loss upcasts the logits to fp32 itself
            out = model(input_ids=tr["input_ids"], attention_mask=tr["attention_mask"], labels=tr["labels"])
        l_r = out.loss.float()
        loss = l_f + lam * (l_r - eps)
        torch_sync(device)
        tb = time.perf_counter()
        (loss / M).backward()
        torch_sync(device)
        tc = time.perf_counter()
        t_f += tb - ta
        t_b += tc - tb
        losses.append(float(loss.detach()))
        l_rs.append(float(l_r.detach()))
        del logits, out, loss, l_f, l_r
    tc = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    torch_sync(device)
    t_o = time.perf_counter() - tc
    lam = max(0.0, lam + dual_lr * (float(np.mean(l_rs)) - eps))
    total = time.perf_counter() - t0
    return total, float(np.mean(losses)), lam, {"forward_s": t_f, "backward_s": t_b, "optimizer_s": t_o}


def torch_forward_probs(
    model, items: Sequence[dict], pad_id: int, *, device: str = "cpu", dtype: str = "float32"
) -> tuple[list[float], float]:
    """Per-item token-mean NLL of the labelled (shifted) tokens, one right-padded batch, no_grad; the
    forward under torch_autocast, the log-softmax in fp32."""
    import torch

    model.eval()
    torch_sync(device)
    t0 = time.perf_counter()
    n = max(len(it["input_ids"]) for it in items)
    p = _pad(items, pad_id, n)
    with torch.no_grad():
        ids, att = _to_torch(p["input_ids"], device), _to_torch(p["attention_mask"], device)
        with torch_autocast(device, dtype):
            logits = model(input_ids=ids, attention_mask=att).logits
        lab = _to_torch(p["labels"], device)[:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        mask = lab != IGNORE
        nll = -torch.gather(logp, -1, lab.clamp(min=0)[..., None])[..., 0] * mask
        avg = (nll.sum(-1) / mask.sum(-1).clamp(min=1)).tolist()  # .tolist() waits for the device
    return avg, time.perf_counter() - t0


def torch_generate(
    model,
    prompts: Sequence[Sequence[int]],
    eos_ids,
    pad_id: int,
    max_new_tokens: int,
    *,
    device: str = "cpu",
    dtype: str = "float32",
):
    """transformers `generate` (greedy, under torch_autocast), one left-padded batch; outputs cut at the
    first EOS."""
    import torch

    model.eval()
    torch_sync(device)
    t0 = time.perf_counter()
    P = max(len(p) for p in prompts)
    ids = np.full((len(prompts), P), pad_id, np.int64)
    mask = np.zeros((len(prompts), P), np.int64)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :], mask[i, P - len(p) :] = p, 1
    with torch.no_grad(), torch_autocast(device, dtype):
        out = model.generate(
            input_ids=_to_torch(ids, device),
            attention_mask=_to_torch(mask, device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(eos_ids),
            pad_token_id=pad_id,
        )
    res = []
    eos = set(int(e) for e in eos_ids)
    for row in out[:, P:].tolist():  # .tolist() waits for the device
        toks = []
        for t in row:
            if t in eos:
                break
            toks.append(t)
        res.append(toks)
    return res, time.perf_counter() - t0


def torch_matmul_peak(
    sizes: Sequence[int] = (1024, 2048),
    reps: int = 3,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    inner: int = 1,
) -> dict:
    """Best GFLOP/s of a square `a @ b` in `dtype` on `device` per size (as jax_matmul_peak)."""
    import torch

    dt = getattr(torch, dtype)
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
        a @ b
        torch_sync(device)

        def once(a=a, b=b):
            for _ in range(inner):
                a @ b
            torch_sync(device)

        best = min(timed(once)[1] for _ in range(reps))
        out[str(n)] = 2 * n**3 * inner / best / 1e9
        del a, b
    return {"gflops": out, "peak": max(out.values()), "dtype": dtype, "inner": inner}


def torch_forward_time(model, part: dict, *, device: str = "cpu", dtype: str = "float32") -> float:
    """Seconds of one no-grad forward of a [1, B, T] batch part (thread-policy comparison)."""
    import torch

    def fwd():
        with torch_autocast(device, dtype):
            model(input_ids=ids, attention_mask=mask)
        torch_sync(device)

    with torch.no_grad():
        ids = _to_torch(part["input_ids"][0], device)
        mask = _to_torch(part["attention_mask"][0], device)
        torch_sync(device)
        return timed(fwd)[1]


def torch_memory(device: str) -> dict:
    """Host peak RSS, and on a GPU torch's peak allocated / reserved bytes (MB) since the worker began."""
    import torch

    out = {"maxrss_mb": maxrss_mb()}
    if torch.device(device).type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


@dataclass(frozen=True)
class WorkerSpec:
    """What the PyTorch worker loads and how it steps: model folder, threads (0: torch's default),
    attention, the dual's λ0 / ε / η, OMP_WAIT_POLICY (None: leave the environment), device, dtype."""

    folder: str
    threads: int
    attn: str
    lam0: float
    eps: float
    dual_lr: float
    omp_wait: str | None
    device: str = "cpu"
    dtype: str = "float32"


def _torch_worker(conn, spec: WorkerSpec) -> None:
    """Subprocess loop: ("step" | "forward" | "forward_batch" | "generate" | "matmul" | "rss" | "stop",
    kwargs) -> dict. `omp_wait` sets OMP_WAIT_POLICY before torch (and its OpenMP runtime) loads; None
    leaves the environment as it is (on a GPU). `device` is torch's ("cpu" or "cuda")."""
    device, dtype, omp_wait = spec.device, spec.dtype, spec.omp_wait
    if omp_wait == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    elif omp_wait is not None:
        os.environ["OMP_WAIT_POLICY"] = omp_wait
    try:
        rss0 = maxrss_mb()
        import torch

        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"torch {torch.__version__} sees no CUDA device (torch.version.cuda {torch.version.cuda})"
            )
        (model, opt), t_load = timed(
            lambda: torch_setup(spec.folder, threads=spec.threads, attn=spec.attn, device=device)
        )
        ctx = {"lam": spec.lam0}
        info = {
            "load_s": t_load,
            "maxrss_mb_before_load": rss0,
            "attn_implementation": model.config._attn_implementation,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (libgomp: spin, then sleep)"),
            "device": device,
            "dtype": dtype,
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            **torch_memory(device),
        }
        if torch.device(device).type == "cuda":
            try:  # descriptive only: never fails the worker
                info["cuda_device_name"] = torch.cuda.get_device_name(device)
                info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
            except Exception as e:  # noqa: BLE001
                info["cuda_info_error"] = repr(e)
        conn.send(info)
    except Exception:  # noqa: BLE001
        conn.send({"error": traceback.format_exc()})
        return
    dd = {"device": device, "dtype": dtype}
    while True:
        cmd, kw = conn.recv()
        try:
            if cmd == "stop":
                conn.send(torch_memory(device))
                return
            if cmd == "step":
                s, loss, ctx["lam"], parts = torch_pdu_step(
                    model, opt, kw["batch"], ctx["lam"], spec.eps, spec.dual_lr, **dd
                )
                out = {"seconds": s, "loss": loss, "lam": ctx["lam"], **parts}
            elif cmd == "forward":
                avg, s = torch_forward_probs(model, kw["items"], kw["pad_id"], **dd)
                out = {"seconds": s, "avg_loss": avg}
            elif cmd == "generate":
                ids, s = torch_generate(
                    model, kw["prompts"], kw["eos_ids"], kw["pad_id"], kw["max_new_tokens"], **dd
                )
                out = {"seconds": s, "ids": ids}
            elif cmd == "forward_batch":
                out = {"seconds": torch_forward_time(model, kw["part"], **dd)}
            elif cmd == "matmul":
                out = torch_matmul_peak(kw.get("sizes", (1024, 2048)), inner=kw.get("inner", 1), **dd)
            elif cmd == "rss":
                out = {}
            else:
                raise ValueError(f"unknown command {cmd!r}")
            out.update(torch_memory(device))
        except Exception:  # noqa: BLE001
            out = {"error": traceback.format_exc()}
        conn.send(out)


class TorchWorker:
    """The PyTorch side in its own process (separate ru_maxrss; never imports JAX)."""

    def __init__(self, spec: WorkerSpec):
        ctx = mp.get_context("spawn")
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_torch_worker, args=(child, spec), daemon=True)
        self.proc.start()
        self.info = self._recv()

    def _recv(self) -> dict:
        while not self.conn.poll(1.0):
            if not self.proc.is_alive():
                raise RuntimeError(f"torch worker exited with code {self.proc.exitcode}")
        out = self.conn.recv()
        if "error" in out:
            raise RuntimeError(f"torch worker failed:\n{out['error']}")
        return out

    def __call__(self, cmd: str, **kw) -> dict:
        self.conn.send((cmd, kw))
        return self._recv()

    def close(self) -> dict:
        out = self("stop")
        self.proc.join(timeout=60)
        return out


# ============================================================================================ the run
def _log(msg: str) -> None:
    print(f"[throughput {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rotate(xs: list, k: int) -> list:
    """xs rotated by k: repetition k runs the contenders in a different order (no fixed position bias)."""
    k %= len(xs)
    return xs[k:] + xs[:k]


def _peaks(samples: Sequence[dict]) -> dict:
    return {"best": max(p["peak"] for p in samples), "median": median([p["peak"] for p in samples])}


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

    _log(f"starting the PyTorch worker (torch device {tdev}, {args.dtype})")
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
    _log(f"loading our model (model.dtype={args.dtype}, param_dtype=float32)")
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
            _log("torch thread-policy check: libgomp's default wait policy (second worker)")
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
        _log("FSDP bytes per device (subprocess, 8 fake CPU devices, JAX_PLATFORMS=cpu)")
        res["fsdp"] = run_fsdp_subprocess(folder, 8)
    res["loadavg_end"] = loadavg()
    res["wall_s"] = time.time() - t_start
    res["goals"] = goal_table(res)
    return res


def phase_eval(model, tok, worker: TorchWorker, items, prompts, pad_id: int, args) -> dict:
    """(4): first calls (compile / warm-up), then interleaved repetitions of forward + generation."""
    from cel_jax.evaluation import generate as gen

    _log("eval: first calls (compile / warm-up)")
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
        _log(f"eval rep {rep + 1}/{args.eval_reps}")
        for side in _rotate(["ours", "torch"], rep):
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

    _log("PDU step: compile")
    pdu = make_jax_step(
        model, "pdu", "primal_dual", batch, lam0=args.lam0, eps=args.eps, dual_lr=args.dual_lr
    )
    comp = {"pdu": compile_step(pdu, batch)}
    _log("PDU step and PyTorch step: warm-up (first runs, same weights and batch)")
    warm: dict[str, float] = {}
    warm["pdu_first_step_s"], _, warm["pdu_first_loss"] = run_step(pdu, batch)
    t0 = worker("step", batch=batch)
    warm["torch_first_step_s"], warm["torch_first_loss"] = t0["seconds"], t0["loss"]
    warm["first_loss_rel_diff"] = abs(warm["pdu_first_loss"] - t0["loss"]) / max(abs(t0["loss"]), 1e-12)
    rss["after_pdu_warmup"] = maxrss_mb()
    dev_mem["after_pdu_warmup"] = jax_device_memory()

    _log("GradDiff step: compile")
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
        _log(f"step rep {rep + 1}/{args.reps} (1-min load {loadavg()[0]})")
        for what in _rotate(["pdu", "torch", "grad_diff"], rep):
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
    _log("loss-head differential PDU vs GradDiff")
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
        _log("breakdown: forward-only and optimizer-only programs")
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

    _log("PDU step with the LM head on all rows: compile")
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
        _log(f"all-rows rep {rep + 1}/{args.reps}")
        for k in _rotate(["all", "answers"], rep):
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


def jnp_copy(x):
    return x.copy()


def omp_compare(worker: TorchWorker, args, part: dict, reps: int = 1) -> dict:
    """No-grad forwards of one batch part: the main worker (args.omp_wait) vs a second worker with libgomp's
    default wait policy, same thread count, interleaved; medians in seconds."""
    other = TorchWorker(replace(worker.spec, omp_wait="default"))
    try:
        t: dict[str, list[float]] = {"main": [], "default_policy": []}
        for w in (worker, other):
            w("forward_batch", part=part)
        for r in range(reps):
            for k in _rotate(list(t), r):
                t[k].append((worker if k == "main" else other)("forward_batch", part=part)["seconds"])
    finally:
        other.close()
    out: dict[str, Any] = {"main_policy": args.omp_wait, "threads": worker.spec.threads, "samples_s": t}
    out["main_s"], out["default_policy_s"] = median(t["main"]), median(t["default_policy"])
    out["default_over_main"] = out["default_policy_s"] / out["main_s"]
    return out


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


# ============================================================================================ output
def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates these results (non-default flags only)."""
    parts = ["python -m bench.throughput"]
    defaults = vars(build_parser().parse_args([]))
    for k, v in vars(args).items():
        if v == defaults.get(k):
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list | tuple):
            parts.append(f"{flag} {' '.join(map(str, v))}")
        else:
            parts.append(f"{flag} {v}")
    return "CEL_JAX_CACHE=/root/.cache/cel_jax " + " ".join(parts)


def _f(x: float, nd: int = 2) -> str:
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
    parts = _md_header(res) + _md_steps(res) + _md_flops(res) + _md_eval(res) + _md_memory(res)
    return "\n".join(parts) + "\n"


def write_results(res: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "throughput.json", out / "throughput.md"
    j.write_text(json.dumps(res, indent=2, default=str) + "\n")
    m.write_text(markdown(res))
    return j, m


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="alias or HF folder (loaded by both sides)")
    p.add_argument("--data", default=None, help="TOFU JSONL folder (default: $CEL_JAX_TOFU_DIR)")
    p.add_argument("--batch", type=int, default=2, help="forget rows = retain rows per step (B)")
    p.add_argument("--seq", type=int, default=128, help="padded length T")
    p.add_argument("--reps", type=int, default=3, help="interleaved step repetitions")
    p.add_argument("--eval-items", type=int, default=8)
    p.add_argument("--eval-reps", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="transformers attention")
    p.add_argument(
        "--mm-sizes",
        type=int,
        nargs="+",
        default=None,
        help=f"square matmul sizes of the peak (default: {list(MM_SIZES['cpu'])} on the CPU, "
        f"{list(MM_SIZES['gpu'])} on a GPU)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="auto: the GPU when JAX's default backend is one, else the CPU (PyTorch follows: cuda / cpu)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="float32: fp32 on both sides; bfloat16: fp32 master weights + AdamW, bf16 matmuls, fp32 losses "
        "(ours model.dtype=bfloat16, param_dtype=float32; PyTorch torch.autocast bf16)",
    )
    p.add_argument("--lam0", type=float, default=1.0)
    p.add_argument("--eps", type=float, default=1.0)
    p.add_argument("--dual-lr", type=float, default=1.0)
    p.add_argument("--torch-threads", type=int, default=0, help="0: os.cpu_count() (CPU only)")
    p.add_argument(
        "--omp-wait",
        default="PASSIVE",
        choices=("PASSIVE", "ACTIVE", "default"),
        help="torch's OMP_WAIT_POLICY (CPU only)",
    )
    p.add_argument(
        "--omp-compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time torch forwards with libgomp's default wait policy (a second worker; CPU only)",
    )
    p.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--all-rows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help='also time our PDU step with lm_head_rows="all" (LM head on every row) against the default',
    )
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default="results")
    return p


def validate_args(args: argparse.Namespace) -> None:
    for k in ("batch", "seq", "reps", "eval_items", "eval_reps", "max_new_tokens"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.torch_threads < 0:
        raise ValueError(f"--torch-threads must be >= 0, got {args.torch_threads}")
    if args.mm_sizes is not None:
        mm_sizes_for("cpu", args.mm_sizes)
    if args.device not in DEVICES or args.dtype not in DTYPES:
        raise ValueError(f"--device {args.device!r} / --dtype {args.dtype!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate_args(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_jax_env(args.device)  # before JAX is first imported (run() imports it)
    res: dict[str, Any] = {}
    try:
        run(args, res)
    except BaseException:
        res["error"] = traceback.format_exc()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput_partial.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        _log(f"failed; what was measured is in {out / 'throughput_partial.json'}")
        raise
    j, m = write_results(res, args.out)
    print(markdown(res))
    _log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
