"""Test setup: 8 fake CPU devices (must happen before any backend initialisation)."""

import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

ROOT = Path(__file__).resolve().parents[1]
TOFU_DIR = ROOT.parent / "shared" / "data" / "tofu"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (conftest_tokenizer)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
