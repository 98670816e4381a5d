"""`python -m bench.throughput [flags]`: run the benchmark, write results/throughput.{json,md} (or --out),
print the Markdown. What was measured before a failure goes to throughput_partial.json."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.throughput.cli import build_parser, validate_args
from bench.throughput.common import log
from bench.throughput.device import prepare_jax_env
from bench.throughput.report import markdown, write_results
from bench.throughput.runner import run


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and check the flags, set JAX's environment, run, write the results (or the partial ones on
    failure) and print the Markdown."""
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
        log(f"failed; what was measured is in {out / 'throughput_partial.json'}")
        raise
    j, m = write_results(res, args.out)
    print(markdown(res))
    log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
