"""Multi-host start-up: one `jax.distributed.initialize` per process, before any device is touched.

Where the arguments come from, first match wins (`resolve`):
  1. CEL_JAX_DISTRIBUTED=off (or 0/false/no): never initialise.
  2. Explicit arguments: a kwargs mapping, a config's `distributed` section, or a config holding one,
     with coordinator_address / num_processes / process_id (/ local_device_ids); "", 0 and -1 mean unset
     (the defaults of cel_jax.config_base).
  3. Environment: CEL_JAX_COORDINATOR (host:port), CEL_JAX_NUM_PROCESSES, CEL_JAX_PROCESS_ID
     (and CEL_JAX_LOCAL_DEVICE_IDS="0,1"), as tpu_scripts/slurm/launch.sh sets them.
  4. SLURM with SLURM_NTASKS > 1: coordinator = first node of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST),
     port CEL_JAX_COORDINATOR_PORT or JAX's own choice from SLURM_JOB_ID; count/id from SLURM_NTASKS/PROCID.
  5. Cloud TPU multi-host slice (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES with several hosts,
     MEGASCALE_NUM_SLICES > 1, TPU_ACCELERATOR_TYPE / ACCELERATOR_TYPE of a multi-host slice, or
     CEL_JAX_DISTRIBUTED=auto as tpu_scripts/run.sh sets it): `jax.distributed.initialize()` with no
     arguments, which reads the TPU metadata itself.
  6. Otherwise a single host: nothing to do.
A single process (num_processes == 1) never initialises.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

KEYS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
OFF = ("0", "off", "false", "no")
_STATE: dict[str, Any] = {"done": False, "kwargs": None}


def tpu_hosts(accelerator_type: str) -> int:
    """Hosts (VMs) of a Cloud TPU slice type such as v4-32, v5litepod-16, v5p-64, v6e-16, v3-8.

    v2/v3/v4/v5p names count TensorCores (8 per host: 4 chips x 2 cores); v5e (v5litepod) and v6e names
    count chips: up to 8 on one host, 4 per host beyond that.
    """
    m = re.fullmatch(r"v(\d+)(p|e|lite|litepod)?-(\d+)", accelerator_type.strip().lower())
    if not m or (m.group(2) in ("e", "lite", "litepod")) != (int(m.group(1)) >= 5 and m.group(2) != "p"):
        raise ValueError(
            f"unrecognised TPU accelerator type {accelerator_type!r} "
            "(expected e.g. v4-32, v5litepod-16, v5p-64)"
        )
    n = int(m.group(3))
    if m.group(2) in ("e", "lite", "litepod"):  # counts chips
        return 1 if n <= 8 else n // 4
    return max(1, n // 8)  # counts TensorCores


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-008,010],cpu1' -> 'gpu003', 'a[1-2]-b[07,9]' -> 'a1-b07'."""
    first, depth = "", 0
    for ch in nodelist.strip():
        if ch == "," and depth == 0:
            break
        depth += ch == "["
        depth -= ch == "]"
        first += ch
    if not first or depth:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], first)


def _explicit(cfg_or_kwargs: Any) -> dict[str, Any]:
    """Explicit arguments from a kwargs mapping or from a config's `distributed` section."""
    if cfg_or_kwargs is None:
        return {}
    is_config = hasattr(cfg_or_kwargs, "to_dict")
    d = cfg_or_kwargs.to_dict() if is_config else dict(cfg_or_kwargs)
    if "distributed" in d:
        d = dict(d["distributed"] or {})
    elif is_config and not set(d) & set(KEYS):
        return {}  # a whole config without a distributed section
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown jax.distributed argument(s) {unknown}; valid: {list(KEYS)}")
    out = {}
    if d.get("coordinator_address"):
        out["coordinator_address"] = str(d["coordinator_address"])
    if d.get("num_processes") not in (None, "") and int(d["num_processes"]) > 0:
        out["num_processes"] = int(d["num_processes"])
    if d.get("process_id") not in (None, "") and int(d["process_id"]) >= 0:
        out["process_id"] = int(d["process_id"])
    if d.get("local_device_ids") not in (None, "", []):
        ids = d["local_device_ids"]
        out["local_device_ids"] = [int(i) for i in (ids.split(",") if isinstance(ids, str) else ids)]
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    names = dict(
        coordinator_address="CEL_JAX_COORDINATOR",
        num_processes="CEL_JAX_NUM_PROCESSES",
        process_id="CEL_JAX_PROCESS_ID",
        local_device_ids="CEL_JAX_LOCAL_DEVICE_IDS",
    )
    return _explicit({k: env[v] for k, v in names.items() if env.get(v, "") != ""})


def _from_slurm(env: Mapping[str, str]) -> dict[str, Any]:
    if int(env.get("SLURM_NTASKS", "1") or 1) <= 1 or "SLURM_PROCID" not in env:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError(
            "SLURM_NTASKS > 1 but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST to find the coordinator"
        )
    port = env.get("CEL_JAX_COORDINATOR_PORT") or str(
        int(env.get("SLURM_JOB_ID", "0")) % 2**12 + 65535 - 2**12 + 1
    )
    return dict(
        coordinator_address=f"{first_slurm_host(nodelist)}:{port}",
        num_processes=int(env["SLURM_NTASKS"]),
        process_id=int(env["SLURM_PROCID"]),
    )


def _tpu_multihost(env: Mapping[str, str]) -> bool:
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return True
    if int(env.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1:
        return True
    acc = env.get("TPU_ACCELERATOR_TYPE") or env.get("ACCELERATOR_TYPE")
    try:
        return bool(acc) and tpu_hosts(acc) > 1
    except ValueError:  # an accelerator name we do not know: leave detection to the other signals
        return False


def resolve(cfg_or_kwargs: Any = None, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Arguments for `jax.distributed.initialize` ({} = auto-detect on Cloud TPU), or None: do nothing."""
    env = os.environ if env is None else env
    mode = env.get("CEL_JAX_DISTRIBUTED", "").strip().lower()
    if mode in OFF:
        return None
    kw = _explicit(cfg_or_kwargs) or _from_env(env) or _from_slurm(env)
    if kw:
        missing = [k for k in KEYS[:3] if k not in kw]
        if missing:
            raise ValueError(f"incomplete jax.distributed arguments {kw}: missing {missing}")
        if not 0 <= kw["process_id"] < kw["num_processes"]:
            raise ValueError(
                f"process_id {kw['process_id']} is not in [0, num_processes={kw['num_processes']})"
            )
        return None if kw["num_processes"] == 1 else kw
    if mode == "auto" or _tpu_multihost(env):
        return {}
    if mode not in ("", "on", "1", "true", "yes"):
        raise ValueError(f"CEL_JAX_DISTRIBUTED={mode!r}: use auto, off, or leave it unset")
    return None


def maybe_initialize(cfg_or_kwargs: Any = None) -> dict[str, Any] | None:
    """Initialise JAX's multi-controller runtime when needed (idempotent); returns the arguments used."""
    import jax

    if _STATE["done"]:
        return _STATE["kwargs"]
    kw = resolve(cfg_or_kwargs)
    if kw is not None and not jax.distributed.is_initialized():
        jax.distributed.initialize(**kw)
    _STATE.update(done=True, kwargs=kw)
    return kw


def is_main_process() -> bool:
    """True on process 0 (the one that logs, writes metrics and exports)."""
    import jax

    return jax.process_index() == 0
