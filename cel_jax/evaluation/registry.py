"""Metrics and pre-computations as data: what each metric needs, so one runner (`runner.py`) can plan a suite.

A suite (e.g. "tofu", "muse") is a `Suite`: a data-loading step, its jobs (pre-computations: forward
passes, generations, GradNorm, ...) and its metrics, each registered with a decorator in one place:

    @register_metric("tofu", "forget_Q_A_Prob", needs=("forget",))
    def forget_prob(run):             # run: runner.Run (model, tok, cfg, values of the jobs, logs)
        return M.probability_result(...)

    @register_job("tofu", "forget", timing="forward: forget")   # runs when a metric needs "forget"
    def forget_forward(run):
        run.values["stats:forget"] = forward.group_stats(...)

A metric lists the jobs it `needs` and the metrics it `uses` (computed first, read via `run.metric(name)`).
Logging follows OU, which logs its pre-computes: a metric without `uses` is computed whenever all of its
jobs ran, requested or not; a metric with `uses` (forget_quality, model_utility, privleak) only on request.
Adding a metric is one decorated function; asking for an unknown name raises, listing the known ones.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from typing import Any

Compute = Callable[[Any], Any]  # (runner.Run) -> an OU result dict


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric of a suite: how to compute it and what it needs."""

    name: str
    compute: Compute
    needs: tuple[str, ...] = ()  # jobs that must run first
    uses: tuple[str, ...] = ()  # metrics it is derived from (computed first; their jobs are needed too)
    retain_keys: tuple[str, ...] = ()  # metrics it reads from the retain model's logs (retain_logs_path)
    unavailable: Callable[[Any], str | None] | None = None  # (run) -> a note when it cannot be computed


@dataclasses.dataclass(frozen=True)
class Job:
    """One pre-computation; it runs (once) when any of its `triggers` is needed, in registration order."""

    name: str
    run: Callable[[Any], None]  # (runner.Run) -> None; stores its results in run.values
    triggers: tuple[str, ...]
    timing: str | None = None  # timing group of its wall / CPU time


@dataclasses.dataclass
class Suite:
    """A benchmark: its data step (timed as "data + tokenisation"), its jobs and its metrics, in order."""

    name: str
    prepare: Callable[[Any], None] | None = None
    jobs: list[Job] = dataclasses.field(default_factory=list)
    metrics: dict[str, Metric] = dataclasses.field(default_factory=dict)


SUITES: dict[str, Suite] = {}
# The built-in suites' modules, imported on first use of the suite (they register on import).
_BUILTIN = {"tofu": "cel_jax.evaluation.tofu_suite", "muse": "cel_jax.evaluation.muse_suite"}


def suite(name: str) -> Suite:
    """The registered suite `name` (a built-in one registered first; any other created empty)."""
    if name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    return SUITES.setdefault(name, Suite(name))


def register_prepare(suite_name: str) -> Callable[[Callable], Callable]:
    """Decorator: the suite's data-loading / tokenisation step, run before its jobs."""

    def deco(fn: Callable) -> Callable:
        suite(suite_name).prepare = fn
        return fn

    return deco


def register_job(
    suite_name: str, name: str, *, triggers: Iterable[str] = (), timing: str | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: a pre-computation run when `name` (or any of `triggers`) is needed."""

    def deco(fn: Callable) -> Callable:
        s = suite(suite_name)
        s.jobs = [j for j in s.jobs if j.name != name]
        s.jobs.append(Job(name, fn, tuple(triggers) or (name,), timing))
        return fn

    return deco


def register_metric(
    suite_name: str,
    name: str,
    *,
    needs: Iterable[str] = (),
    uses: Iterable[str] = (),
    retain_keys: Iterable[str] = (),
    unavailable: Callable[[Any], str | None] | None = None,
) -> Callable[[Compute], Compute]:
    """Decorator: register `fn(run) -> result` as metric `name` of the suite (replacing one of that name)."""

    def deco(fn: Compute) -> Compute:
        s = suite(suite_name)
        for u in uses:
            if u not in s.metrics:
                raise ValueError(f"metric {name!r} uses {u!r}, which is not registered in {suite_name!r}")
        metric = Metric(name, fn, tuple(needs), tuple(uses), tuple(retain_keys), unavailable)
        s.metrics[name] = metric
        return fn

    return deco


def unregister_metric(suite_name: str, name: str) -> None:
    """Remove a metric (tests registering toy metrics clean up with this)."""
    suite(suite_name).metrics.pop(name, None)


def known(suite_name: str) -> list[str]:
    """Names of the suite's metrics, in registration order."""
    return list(suite(suite_name).metrics)


def check_names(suite_name: str, names: Iterable[str]) -> None:
    """ValueError naming the unknown metrics and listing the known ones."""
    unknown = [n for n in names if n not in suite(suite_name).metrics]
    if unknown:
        raise ValueError(f"unknown {suite_name.upper()} metrics {unknown}; choose from {known(suite_name)}")


def needed_jobs(suite_name: str, names: Iterable[str]) -> set[str]:
    """The jobs the metrics `names` need, through the metrics they use."""
    check_names(suite_name, names)
    metrics = suite(suite_name).metrics
    need: set[str] = set()
    todo = list(names)
    seen: set[str] = set()
    while todo:
        m = metrics[todo.pop()]
        if m.name in seen:
            continue
        seen.add(m.name)
        need |= set(m.needs)
        todo += m.uses
    return need


def check_jobs(suite_name: str, need: Iterable[str]) -> None:
    """ValueError for needed jobs that no registered job runs (a metric's `needs` misspelt)."""
    runs = {t for j in suite(suite_name).jobs for t in j.triggers}
    missing = sorted(set(need) - runs)
    if missing:
        users = [m.name for m in suite(suite_name).metrics.values() if set(m.needs) & set(missing)]
        raise ValueError(f"{suite_name}: no job runs {missing} (needed by {users}); jobs: {sorted(runs)}")


def logged(suite_name: str, requested: Iterable[str], ran: set[str]) -> list[str]:
    """Metrics to compute, in registration order: the requested ones, and (as OU logs its pre-computes)
    every metric without `uses` whose jobs all ran."""
    requested = set(requested)
    return [
        n
        for n, m in suite(suite_name).metrics.items()
        if n in requested or (not m.uses and m.needs and set(m.needs) <= ran)
    ]
