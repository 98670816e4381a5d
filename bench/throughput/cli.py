"""The command line: flags (`build_parser`), their checks (`validate_args`) and the command that
regenerates a run's results (`command_line`, non-default flags only)."""

from __future__ import annotations

import argparse

import bench.throughput
from bench.throughput.common import DEFAULT_MODEL
from bench.throughput.device import DEVICES, DTYPES, MM_SIZES, mm_sizes_for


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


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m bench.throughput` (`--help` lists them)."""
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=bench.throughput.__doc__.split("\n")[0]
    )
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
    """ValueError for counts below 1, negative threads, bad matmul sizes or an unknown device / dtype."""
    for k in ("batch", "seq", "reps", "eval_items", "eval_reps", "max_new_tokens"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.torch_threads < 0:
        raise ValueError(f"--torch-threads must be >= 0, got {args.torch_threads}")
    if args.mm_sizes is not None:
        mm_sizes_for("cpu", args.mm_sizes)
    if args.device not in DEVICES or args.dtype not in DTYPES:
        raise ValueError(f"--device {args.device!r} / --dtype {args.dtype!r}")
