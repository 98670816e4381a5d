"""Device and dtype settings of the throughput run: --device / --dtype resolution, JAX's environment, the
matmul-peak sizes, the precision each side computes in, the parity thresholds, and machine / device-memory
descriptions for the results. JAX is imported inside the functions that need it."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.throughput.common import cpu_name

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
