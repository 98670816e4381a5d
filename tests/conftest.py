"""Test setup: 8 fake CPU devices (must happen before any backend initialisation); where TOFU data is.

TOFU_FIXTURES: TOFU-format files written for the tests (tests/fixtures/tofu/README.md), used by every test
that needs TOFU-shaped data, so the suite runs anywhere, offline. REAL_TOFU: the real TOFU JSONL folder,
only from $CEL_JAX_TOFU_DIR; tests of real-TOFU facts are marked `needs_real_tofu` and skip without it.
"""

import os
import sys
from pathlib import Path

import pytest

# Tests only: cheaper LLVM optimisation for the many small compiled programs (results may differ in
# the last float bits; every tolerance in the tests is far above that).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (conftest_tokenizer)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cel_jax.data.qa import tofu_dir  # noqa: E402  (after the setup above)

ROOT = Path(__file__).resolve().parents[1]
TOFU_FIXTURES = ROOT / "tests" / "fixtures" / "tofu"
MUSE_FIXTURES = ROOT / "tests" / "fixtures" / "muse"
REAL_TOFU = tofu_dir()
needs_real_tofu = pytest.mark.skipif(
    REAL_TOFU is None, reason="CEL_JAX_TOFU_DIR not set: real TOFU data tests skipped"
)


@pytest.fixture(scope="session")
def tofu_mini_run(tmp_path_factory, worker_id):
    """bench.tofu_mini's tiny run (tests/tofu_tiny.py), once per test session even under pytest-xdist: the
    first worker to ask runs it in the workers' shared temporary folder, the others wait and read its
    result (test_tofu_mini.py and test_tofu_sweep.py usually run on different workers)."""
    import pickle

    from filelock import FileLock
    from tofu_tiny import run_mini

    if worker_id == "master":
        return run_mini(tmp_path_factory.mktemp("tofu_mini"))
    root = tmp_path_factory.getbasetemp().parent / "tofu_mini_shared"
    done = root.with_suffix(".pkl")
    with FileLock(str(root.with_suffix(".lock"))):
        if not done.exists():
            root.mkdir(exist_ok=True)
            done.write_bytes(pickle.dumps(run_mini(root)))
        return pickle.loads(done.read_bytes())
