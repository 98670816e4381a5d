"""The PyTorch side in its own spawned process (its own peak RSS; it never imports JAX): WorkerSpec says
what it loads, _torch_worker is its command loop, TorchWorker the parent's handle."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass

from bench.throughput.common import maxrss_mb, timed
from bench.throughput.torch_reference import (
    torch_forward_probs,
    torch_forward_time,
    torch_generate,
    torch_matmul_peak,
    torch_memory,
    torch_pdu_step,
    torch_setup,
)


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
