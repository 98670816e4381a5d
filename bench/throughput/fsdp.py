"""(6) Parameter bytes per device, FSDP mesh (1, n, 1) vs replicated, measured in a spawned child on n fake
CPU devices (the child sets its JAX platform before JAX loads, and never loads torch)."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback

from bench.throughput.common import maxrss_mb


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
    """fsdp_param_bytes of `model_name` in a spawned child with `fsdp` CPU devices ({"error": ...} if it
    fails or dies)."""
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
