"""The notebooks under notebooks/ execute top to bottom (nbclient, small mode: tiny model, 2-3 steps) and
draw their plots; the committed files carry no outputs of a small (CI) run."""

import json
import math
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("quickstart", "results", "custom_data")
# Figures each notebook must leave in its work folder (CEL_JAX_NOTEBOOK_WORKDIR/<name>).
FIGURES = {
    "quickstart": ("quickstart_curves.png", "run/training_curves.png"),
    "results": (
        "results_tofu.png",
        "results_tofu_fq_vs_mu.png",
        "results_smoke.png",
        "results_throughput.png",
        "results_tofu_mini.png",
    ),
    "custom_data": ("run/training_curves.png",),
}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _fake_results(root: Path) -> Path:
    """One file of each kind results.ipynb reads, in the layouts the commands write."""
    _write(
        root / "eval" / "pdu" / "TOFU_SUMMARY.json",
        {"forget_quality": 0.4, "model_utility": 0.5, "forget_Q_A_ROUGE": 0.3, "privleak": None},
    )
    _write(
        root / "eval" / "graddiff" / "TOFU_SUMMARY.json",
        {"forget_quality": 1e-5, "model_utility": 0.45, "forget_Q_A_ROUGE": 0.6, "max_items": 40},
    )
    _write(root / "eval" / "broken" / "TOFU_SUMMARY.json", {})  # nothing plottable: skipped
    (root / "smoke").mkdir()
    (root / "smoke" / "truncated.json").write_text("{")  # unreadable: skipped with a message
    loss = lambda a: [a, a * 0.9, a * 0.8]
    _write(
        root / "smoke" / "methods.json",
        {
            "methods": {
                m: {"wall_s": 12.5, "forget_loss": loss(2.0), "retain_loss": loss(1.0), "dual": [1.0] * 3}
                for m in ("pdu", "npo")
            }
        },
    )
    goal = lambda g, v, t, met: {"goal": g, "value": v, "target": t, "met": met}
    _write(
        root / "throughput.json",
        {
            "machine": {"cores": 2},
            "goals": [goal("(1) speedup", 1.7, ">= 1.5", True), goal("(2) ratio", 1.05, "<= 1.03", False)],
        },
    )
    curve = {
        "step": [1, 2, 3],
        "dual": [100.0, 100.0, 101.5],
        "retain_loss": [0.1, 0.2, 0.3],
        "eps": [0.2] * 3,
    }
    _write(
        root / "tofu_mini" / "results.json",
        {
            "protocol_text": "preset test",
            "rows": {
                "retain": {
                    "label": "retain model",
                    "summary": {"forget_quality": None, "model_utility": 0.6},
                },
                "pdu": {
                    "label": "PDU (logit margin)",
                    "summary": {"forget_quality": 0.3, "model_utility": 0.5},
                },
                "npo": {"label": "NPO", "summary": {"forget_quality": 1e-4, "model_utility": 0.4}},
            },
            "curves": {"pdu": curve},
        },
    )
    return root


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def _execute(name: str) -> str:
    """Runs notebooks/<name>.ipynb in a fresh kernel (cwd notebooks/); returns the text of its outputs."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    return _outputs_text(nb)


@pytest.fixture
def small_env(tmp_path, monkeypatch):
    """Small mode; work folders and a results folder under tmp_path (the kernel inherits os.environ)."""
    monkeypatch.setenv("CEL_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("CEL_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("CEL_JAX_RESULTS_DIR", str(_fake_results(tmp_path / "results")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # TOFU from the fixtures or $CEL_JAX_TOFU_DIR, never the hub
    return tmp_path / "work"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_in_small_mode(name, small_env):
    text = _execute(name)
    work = small_env / name
    assert "SMALL mode" in text
    assert f"NOTEBOOK OK: {name}" in text
    for fig in FIGURES[name]:
        path = work / fig
        assert path.is_file() and path.stat().st_size > 1000, f"{name} did not draw {fig}"
    if name == "results":
        assert f"NOTEBOOK OK: results ({len(FIGURES['results'])} figures" in text
        assert "skipping" in text  # the truncated smoke file was reported, not fatal
    if name == "quickstart":
        rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3]  # configs/demo.py cut to max_steps=3
        assert all(r["dual_active"] and math.isfinite(r["dual_eff"]) for r in rows)  # no warm start
        summary = json.loads((work / "run" / "summary.json").read_text())
        assert summary["dual_rule"] == "alm" and summary["eps"] > 0
        assert isinstance(summary["constraint_satisfied"], bool)
        assert math.isfinite(summary["forget_rouge_before"]) and math.isfinite(summary["retain_rouge_after"])
        assert summary["lambda_first"] == 1.0  # dual.lam0
        # the fine-tuning stage ran and was cached inside the work dir, never in the user's cache
        assert "target: teaching" in text
        targets = list((work / "cache" / "targets").iterdir())
        assert len(targets) == 1 and (targets[0] / "model" / "config.json").is_file()
        assert "retain ROUGE-L recall (4 Q)" in text and "constraint satisfied" in text


def test_results_notebook_reads_the_repository_results(small_env, monkeypatch):
    """Whatever the benchmarks committed under results/ (possibly nothing) must not break the notebook."""
    monkeypatch.delenv("CEL_JAX_RESULTS_DIR")
    assert "NOTEBOOK OK: results" in _execute("results")


def test_notebooks_read_tofu_from_the_fixtures_the_env_or_the_hub(monkeypatch):
    """Small mode (the tests) reads the repository's TOFU-format fixtures, full mode the hub;
    $CEL_JAX_TOFU_DIR wins in both. Nothing outside the repository is read."""
    import importlib.util

    def small_module(small: str):
        monkeypatch.setenv("CEL_JAX_NOTEBOOK_SMALL", small)
        spec = importlib.util.spec_from_file_location("_small_under_test", NB_DIR / "_small.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    monkeypatch.delenv("CEL_JAX_TOFU_DIR", raising=False)
    fixtures = NB_DIR.parent / "tests" / "fixtures" / "tofu"
    assert small_module("1").TOFU == str(fixtures) and (fixtures / "forget01.jsonl").is_file()
    assert small_module("0").TOFU == "locuslab/TOFU"
    monkeypatch.setenv("CEL_JAX_TOFU_DIR", "/data/tofu")
    assert small_module("1").TOFU == small_module("0").TOFU == "/data/tofu"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_hold_no_small_run_outputs(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert "SMALL mode" not in _outputs_text(nb), f"{name}.ipynb was committed with outputs of a CI run"
    if name != "quickstart":  # only quickstart may carry the outputs of a real run
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"strip {name}.ipynb"
        assert all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
