"""The PyTorch reference: transformers' LlamaForCausalLM + torch AdamW computing our PDU Lagrangian step,
the TOFU eval's probabilities and greedy generation, a matmul peak and the memory readings. torch is
imported inside the functions, so this module loads without it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from bench.throughput.common import IGNORE, maxrss_mb, timed
from bench.throughput.device import DTYPES
from bench.throughput.workload import pad_batch


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
    """An int64 tensor of `x` on `device` (token ids, masks, labels)."""
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
    p = pad_batch(items, pad_id, n)
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
