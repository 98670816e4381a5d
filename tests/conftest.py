"""Test setup: 8 fake CPU devices (must happen before any backend initialisation)."""

import os
import sys
from pathlib import Path

# Tests only: cheaper LLVM optimisation for the many small compiled programs (results may differ in
# the last float bits; every tolerance in the tests is far above that).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

ROOT = Path(__file__).resolve().parents[1]
TOFU_DIR = ROOT.parent / "shared" / "data" / "tofu"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (conftest_tokenizer)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
