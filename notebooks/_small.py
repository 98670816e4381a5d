"""Shared setup of the notebooks: paths, work folders and the small CI configuration.

CEL_JAX_NOTEBOOK_SMALL=1 switches every notebook to a tiny random Llama (tests/tiny_model.py), 2-3 steps and
2 evaluation items, so the test suite can execute them in seconds (tests/test_notebooks.py).
CEL_JAX_NOTEBOOK_WORKDIR: where runs go (default: <tmp>/cel_jax_notebooks).
CEL_JAX_RESULTS_DIR: the results folder results.ipynb reads (default: the repository's results/).
CEL_JAX_TOFU_DIR: a local folder of TOFU JSONL files. `TOFU` is that folder when set; otherwise the
TOFU-format test fixtures (tests/fixtures/tofu) in small mode, and the hub dataset locuslab/TOFU in full mode.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

SMALL = os.environ.get("CEL_JAX_NOTEBOOK_SMALL", "0").lower() not in ("", "0", "false", "no")
ROOT = Path(__file__).resolve().parents[1]  # the repository
TOFU_FIXTURES = ROOT / "tests" / "fixtures" / "tofu"
RESULTS = Path(os.environ.get("CEL_JAX_RESULTS_DIR", ROOT / "results"))
# tqdm.auto warns once when ipywidgets is missing; its text progress bars work fine without.
warnings.filterwarnings("ignore", message="IProgress not found")


def tofu() -> str:
    """Where the notebooks read TOFU (a folder of JSONL files, one per config, or the hub name)."""
    from cel_jax.data import tofu_dir

    local = tofu_dir()
    if local is not None:
        return str(local)
    return str(TOFU_FIXTURES) if SMALL else "locuslab/TOFU"


def __getattr__(name: str):
    if name == "TOFU":  # resolved on first use: results.ipynb, which needs no TOFU, never imports cel_jax
        return tofu()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def workdir(name: str) -> Path:
    """A fresh, empty folder for one notebook's runs (a leftover checkpoint would make train.run resume)."""
    base = Path(os.environ.get("CEL_JAX_NOTEBOOK_WORKDIR", Path(tempfile.gettempdir()) / "cel_jax_notebooks"))
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def tiny_model_dir(path: str | os.PathLike) -> Path:
    """A random 2-layer Llama + tiny tokenizer with a chat template, saved as an HF folder (small mode)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from tiny_model import make_tiny_model_dir

    return make_tiny_model_dir(path)


def banner(notebook: str) -> None:
    mode = "SMALL mode (tiny random model, CI)" if SMALL else "full mode"
    print(f"{notebook}: {mode}")
