"""The one runner of every suite: plan the jobs the requested metrics need (registry), run them, compute.

Steps: check the names; note the metrics that cannot be computed (`unavailable`, e.g. no reference model);
load the retain model's logs the requested metrics read; the suite's data step ("data + tokenisation");
its jobs in order (each timed under its group); then the metrics (`registry.logged`), derived ones after
the metrics they use. Returns (logs, timings) with timings {group: {"wall_s", "cpu_s"}}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cel_jax.evaluation import registry
from cel_jax.evaluation import report as R
from cel_jax.evaluation.timing import clock, elapsed


class Run:
    """State of one suite run, handed to the data step, the jobs and the metric functions.

    `values`: what the data step and the jobs computed (keyed as they choose, e.g. "stats:forget");
    `need`: the jobs to run; `logs`: the metric results so far; `retain_logs`: the retain model's logs.
    """

    def __init__(self, suite_name: str, model, tok, cfg: Mapping[str, Any], ref_model=None):
        self.suite = registry.suite(suite_name)
        self.model, self.tok, self.cfg, self.ref_model = model, tok, cfg, ref_model
        self.names = list(cfg["metrics"])
        self.values: dict[str, Any] = {}
        self.logs: dict[str, Any] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self.retain_logs: dict[str, Any] | None = None
        self.need: set[str] = set()

    def metric(self, name: str) -> dict[str, Any] | None:
        """The result of metric `name`, computed (and logged) on first use; None when its compute returns
        None (a metric the data cannot give, e.g. a paraphrased-answer probability without paraphrases)."""
        if name not in self.logs:
            result = self.suite.metrics[name].compute(self)
            if result is None:
                return None
            self.logs[name] = result
        return self.logs[name]

    def timed(self, group: str, fn, *args: Any) -> Any:
        """fn(*args), its wall / CPU seconds added under `group`."""
        t = clock()
        out = fn(*args)
        self.timings[group] = elapsed(t)
        return out


def run_suite(suite_name: str, model, tok, cfg: Mapping[str, Any], ref_model=None) -> tuple[dict, dict]:
    """Compute the requested metrics of a registered suite; returns (logs, timings_s). Metrics that cannot
    be computed (no retain logs, no reference model) get agg_value None and a "note"."""
    run = Run(suite_name, model, tok, cfg, ref_model)
    registry.check_names(suite_name, run.names)
    notes = unavailable_notes(run)
    requested = [n for n in run.names if n not in notes]
    run.need = registry.needed_jobs(suite_name, requested)
    registry.check_jobs(suite_name, run.need)
    run.retain_logs = retain_logs(run, requested)
    run_jobs(run)
    for name in registry.logged(suite_name, requested, run.need):
        run.metric(name)
    for name, note in notes.items():
        run.logs[name] = {**run.logs.get(name, {"agg_value": None}), "note": note}
    return run.logs, run.timings


def unavailable_notes(run: Run) -> dict[str, str]:
    """{metric: note} for the requested metrics that cannot be computed in this run."""
    metrics = run.suite.metrics
    return {n: note for n in run.names if metrics[n].unavailable and (note := metrics[n].unavailable(run))}


def retain_logs(run: Run, names: list[str]) -> dict[str, Any] | None:
    """The retain model's logs when `retain_logs_path` is set and a metric reads them (keys checked)."""
    keys = [k for n in names for k in _retain_keys(run.suite.metrics, n)]
    if not (run.cfg.get("retain_logs_path") and keys):
        return None
    return R.load_retain_logs(run.cfg["retain_logs_path"], require=dict.fromkeys(keys))


def run_jobs(run: Run) -> None:
    """The data step, then every job one of whose triggers is needed, in registration order, timed."""
    if run.suite.prepare is not None:
        run.timed("data + tokenisation", run.suite.prepare, run)
    for job in run.suite.jobs:
        if run.need & set(job.triggers):
            if job.timing:
                run.timed(job.timing, job.run, run)
            else:
                job.run(run)


def _retain_keys(metrics: Mapping[str, registry.Metric], name: str) -> list[str]:
    """The retain-log keys metric `name` reads, through the metrics it uses."""
    m = metrics[name]
    return [*m.retain_keys, *(k for u in m.uses for k in _retain_keys(metrics, u))]
