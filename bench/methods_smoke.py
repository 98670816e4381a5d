"""Every unlearning method end to end on the embedded SmolLM2-135M-Instruct and TOFU forget01/retain99.

  python -m bench.methods_smoke [--steps 2] [--out results/smoke/methods_smollm2_forget01.json]

Each method runs `cel-jax unlearn`'s code path (`train.run`) with configs/tofu_smollm2.py for a few optimizer
steps (batch 2, no accumulation) and records its losses, λ and wall time. This shows that every method
name works on a real pretrained model and real TOFU data on the CPU; it is not a quality benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def config(method: str, steps: int):
    from cel_jax.data import tofu_source

    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / "tofu_smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("forget01")
    c.data.source = tofu_source()  # $CEL_JAX_TOFU_DIR (local TOFU JSONL files) when set, else locuslab/TOFU
    c.method = method
    c.max_steps = steps
    c.batch_size = 2
    c.grad_accum = 1
    c.export = False
    c.ckpt.every = 1000
    c.ckpt.async_save = False
    return c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--methods", default="")
    ap.add_argument("--out", default=str(ROOT / "results" / "smoke" / "methods_smollm2_forget01.json"))
    args = ap.parse_args()
    from cel_jax.data import tofu_dir, tofu_source
    from cel_jax.training import train
    from cel_jax.unlearning import methods

    names = args.methods.split(",") if args.methods else sorted(methods.METHODS)
    results = {}
    for name in names:
        with tempfile.TemporaryDirectory() as wd:
            t0 = time.time()
            train.run(config(name, args.steps), wd)
            rows = [json.loads(x) for x in (Path(wd) / "metrics.jsonl").read_text().splitlines()]
            results[name] = {
                "wall_s": round(time.time() - t0, 1),
                "loss": [r["loss"] for r in rows],
                "forget_loss": [r["forget_loss"] for r in rows],
                "retain_loss": [r["retain_loss"] for r in rows],
                "dual": [r["dual"] for r in rows],
                "seq_len": [r["seq_len"] for r in rows],
            }
            print(name, results[name], flush=True)
    out = {
        "command": f"python -m bench.methods_smoke --steps {args.steps}",
        "model": "smollm2-135m-instruct (embedded)",
        "data": f"TOFU forget01 / retain99 ({'$CEL_JAX_TOFU_DIR' if tofu_dir() else tofu_source()})",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
        "methods": results,
    }
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
