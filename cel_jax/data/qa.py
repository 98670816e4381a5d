"""Loading and validating QA sets (TOFU layout) and MUSE text sets; rows are plain dicts.

Sources: a local folder of JSON/JSONL files (file name = config name, e.g. a copy of TOFU with
`forget01.jsonl`, `retain99.jsonl`, ..., or `<folder>/<config>/<split>.jsonl` for the MUSE layout), a single
`.json`/`.jsonl` file, a `datasets.Dataset`/`DatasetDict`, a list of dicts, or a hub name such as
"locuslab/TOFU" (loaded with `datasets.load_dataset` and cached by `datasets`; this is the only place that
can touch the network). `$CEL_JAX_TOFU_DIR` names a local copy of TOFU: when set, the source
"locuslab/TOFU" reads that folder instead of the hub (unless `hub=True`).
Errors name the source and the row: `<file>, line N` (1-based line of the file) for JSON-lines files,
`<source>, row i` (0-based index, as in the `*_rows` selections) for every other source.
"""

import functools
import json
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A schema maps each required field to its type: str (non-empty text) or list (non-empty list of texts).
SCHEMAS: dict[str, dict[str, type]] = {
    "qa": {"question": str, "answer": str},
    # forget*_perturbed and retain_perturbed: paraphrase plus 5 perturbed answers.
    "perturbed": {"question": str, "answer": str, "paraphrased_answer": str, "perturbed_answer": list},
    # real_authors_perturbed / world_facts_perturbed: answer plus 3 wrong options, no paraphrase.
    "options": {"question": str, "answer": str, "perturbed_answer": list},
    "text": {"text": str},  # MUSE raw / privleak / scal / sust
    "completion": {"prompt": str, "gt": str},  # MUSE verbmem
}

# MUSE configs (muse-bench/MUSE-News, MUSE-Books) -> schema of their rows.
MUSE_SCHEMAS = {
    "raw": "text",
    "privleak": "text",
    "scal": "text",
    "sust": "text",
    "verbmem": "completion",
    "knowmem": "qa",
}

# TOFU forget split -> the retain split that completes it (the one home of this map)
TOFU_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}

DATA_DIR = Path(__file__).resolve().parent
# The package's own demo set (our text, TOFU's fields); load with load_qa(DATA_DIR, DEMO_SPLITS[key]).
DEMO_SPLITS = {
    "full": "demo",
    "forget": "demo_forget",
    "retain": "demo_retain",
    "holdout": "demo_holdout",
    "forget_perturbed": "demo_forget",
    "retain_perturbed": "demo_retain_perturbed",
}


TOFU_HUB = "locuslab/TOFU"  # the hub dataset (one config per file of the local layout, split "train")
TOFU_ENV = "CEL_JAX_TOFU_DIR"  # a local folder of TOFU JSONL files (forget01.jsonl, full.jsonl, ...)


def tofu_dir() -> Path | None:
    """The local TOFU folder named by `$CEL_JAX_TOFU_DIR`, or None when the variable is unset or empty.
    When set, the loaders read the source "locuslab/TOFU" from it (the default of every TOFU config)."""
    value = os.environ.get(TOFU_ENV, "").strip()
    return Path(value).expanduser() if value else None


def tofu_source() -> str:
    """Where TOFU is read by default: `$CEL_JAX_TOFU_DIR` when set, else the hub dataset locuslab/TOFU."""
    local = tofu_dir()
    return str(local) if local is not None else TOFU_HUB


def tofu_splits(forget_split: str) -> dict[str, str]:
    """TOFU config names that go with a forget split (forget01 -> retain99, holdout01, ...)."""
    if forget_split not in TOFU_RETAIN:
        raise ValueError(f"unknown TOFU forget split {forget_split!r}; expected one of {sorted(TOFU_RETAIN)}")
    pct = forget_split.removeprefix("forget")
    return {
        "full": "full",
        "forget": forget_split,
        "retain": TOFU_RETAIN[forget_split],
        "holdout": f"holdout{pct}",
        "forget_perturbed": f"{forget_split}_perturbed",
        "retain_perturbed": "retain_perturbed",
        "real_authors_perturbed": "real_authors_perturbed",
        "world_facts_perturbed": "world_facts_perturbed",
    }


def infer_schema(config: str | None) -> str:
    """Schema a TOFU/MUSE config name implies ("qa" when unknown)."""
    if config is None:
        return "qa"
    name = Path(config).stem
    if name in ("real_authors_perturbed", "world_facts_perturbed"):
        return "options"
    if name.endswith("_perturbed"):
        return "perturbed"
    return MUSE_SCHEMAS.get(name, "qa")


def load_qa(
    source: Any,
    config: str | None = None,
    split: str = "train",
    *,
    schema: str | Mapping[str, type] | None = None,
    extra_fields: Iterable[str] = (),
    hub: bool | None = None,
) -> list[dict]:
    """Loads and validates a QA set; returns a list of row dicts.

    `schema` defaults to what the config name implies (`*_perturbed` -> "perturbed", ...).
    `extra_fields` adds required text fields (e.g. "paraphrased_question" for question_key).
    `hub`: None = hub only when `source` is not a local path, False = never, True = always.
    """
    if schema is None:
        schema = infer_schema(config)
    fields = dict(SCHEMAS[schema]) if isinstance(schema, str) else dict(schema)
    for f in extra_fields:
        fields.setdefault(f, str)
    rows, origin, lines = _load_located(source, config, split, hub)
    validate_rows(rows, fields, origin, lines=lines)
    return rows


def load_text(source: Any, config: str | None = None, split: str = "train", **kw: Any) -> list[dict]:
    """Loads a raw-text set (rows with a `text` field), e.g. MUSE raw/forget."""
    return load_qa(source, config, split, schema="text", **kw)


def load_muse(source: Any, config: str, split: str, *, hub: bool | None = None) -> list[dict]:
    """Loads one MUSE config/split: raw, verbmem, knowmem, privleak (folders `<src>/<config>/<split>`)."""
    base = config.split("/")[-1]
    if base not in MUSE_SCHEMAS:
        raise ValueError(f"unknown MUSE config {config!r}; expected one of {sorted(MUSE_SCHEMAS)}")
    return load_qa(source, config, split, schema=MUSE_SCHEMAS[base], hub=hub)


# ---------------------------------------------------------------------------------------------------
# Sources


def _load_located(
    source: Any, config: str | None, split: str, hub: bool | None
) -> tuple[list, str, list | None]:
    """Raw rows, their origin, and each row's 1-based file line (JSON-lines files; else None)."""
    if isinstance(source, list | tuple):
        return list(source), "<list of rows>", None
    if _is_hf_dataset(source):
        return _rows_from_dataset(source, split), f"<datasets object, split {split!r}>", None
    if not isinstance(source, str | os.PathLike):
        raise ValueError(f"unsupported data source of type {type(source).__name__}")
    named = ""
    if hub is None and str(source).strip().lower() == TOFU_HUB.lower() and tofu_dir() is not None:
        source, named = tofu_dir(), f" (the local copy of {TOFU_HUB} named by {TOFU_ENV})"
    path = Path(os.path.expanduser(str(source)))
    if hub is True or (hub is None and not named and not path.exists() and _looks_like_hub_name(str(source))):
        return _load_hub(str(source), config, split), f"hub:{source}/{config}/{split}", None
    if not path.exists():
        raise FileNotFoundError(f"data source {str(source)!r}{named} does not exist")
    if path.is_file():
        return _read_file(path)
    if config is None:
        raise ValueError(f"data source {str(path)!r} is a folder: give a config name (e.g. 'forget01')")
    return _read_file(resolve_config_file(path, config, split))


def resolve_config_file(folder: Path, config: str, split: str) -> Path:
    """`<folder>/<config>/<split>.jsonl|json`, else (split "train" only) `<folder>/<config>.jsonl|json`."""
    tried = [folder / config / f"{split}{ext}" for ext in (".jsonl", ".json")]
    if split == "train":
        tried += [folder / f"{config}{ext}" for ext in (".jsonl", ".json")]
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"no file for config {config!r} split {split!r} in {str(folder)!r}; tried: "
        + ", ".join(str(p) for p in tried)
    )


def _read_file(path: Path) -> tuple[list, str, list | None]:
    rows, lines = _read_json_lines(path)
    return rows, str(path), lines


def _read_json_lines(path: Path) -> tuple[list, list[int] | None]:
    """Rows of a JSON array file (lines None), or of a JSON-lines file with each row's 1-based line."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
        return list(data), None
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: invalid JSON: {e.msg}") from None
        lines.append(lineno)
    return rows, lines


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets") and hasattr(obj, "column_names")


def _rows_from_dataset(ds: Any, split: str) -> list[dict]:
    if isinstance(ds.column_names, dict):  # DatasetDict
        if split not in ds:
            raise ValueError(f"datasets object has no split {split!r}; splits: {sorted(ds)}")
        ds = ds[split]
    return ds.to_list()


def _looks_like_hub_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", name) is not None


def _load_hub(name: str, config: str | None, split: str) -> list[dict]:
    """`datasets.load_dataset` (cached by datasets). Without network (the hub's host name does not resolve)
    datasets runs in its offline mode: a cached copy loads, a missing one fails at once instead of retrying
    for ~25 s. Failing to reach the hub raises one FileNotFoundError that says how to use a local folder."""
    import datasets  # lazy: only when the user asked for the hub

    offline = not _hub_reachable()
    try:
        with _hub_offline_mode(offline):
            return datasets.load_dataset(name, config, split=split).to_list()
    except Exception as e:
        if not _is_connection_error(e):
            raise
        why = f"no network: {_hub_host()} does not resolve" if offline else _first_line(e)
        raise FileNotFoundError(_offline_message(name, config, split, why)) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _offline_message(name: str, config: str | None, split: str, why: str) -> str:
    """One line: what could not be loaded, why, and how to point at a local folder instead."""
    what = f"{name!r}" + (f" config {config!r}" if config else "") + f" split {split!r}"
    tofu = name.lower() == TOFU_HUB.lower()
    where = "/path/to/tofu" if tofu else "/path/to/folder"
    example = f"{where}/{config or '<config>'}.jsonl"
    env = f", or set {TOFU_ENV}={where} (both)" if tofu else ""
    return (
        f"cannot load {what} from the Hugging Face hub and the datasets cache has no copy ({why}); "
        f"use a local folder of JSON-lines files named after the configs ({example}): "
        f"--config.data.source={where} (unlearn, finetune), --config.data_dir={where} (eval){env}"
    )


_NET_ERROR_NAMES = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout"}


def _is_connection_error(e: BaseException) -> bool:
    """ConnectionError / TimeoutError, or the hub's and HTTP clients' own "could not connect" errors."""
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    return any(c.__name__ in _NET_ERROR_NAMES for c in type(e).__mro__)


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """False when the hub's host name does not resolve (no network): one cheap DNS query per process.
    With a proxy configured the proxy resolves names, so the hub counts as reachable."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = _hub_host()
    if not host:
        return True
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _hub_host() -> str | None:
    return urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname


@contextmanager
def _hub_offline_mode(offline: bool) -> Iterator[None]:
    """datasets' and huggingface_hub's offline switches (what HF_HUB_OFFLINE=1 sets at import) while
    loading, restored afterwards."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = [
        (m, m.HF_HUB_OFFLINE)
        for m in (datasets.config, huggingface_hub.constants)
        if hasattr(m, "HF_HUB_OFFLINE")
    ]
    try:
        for m, _ in saved:
            m.HF_HUB_OFFLINE = True
        yield
    finally:
        for m, v in saved:
            m.HF_HUB_OFFLINE = v


# ---------------------------------------------------------------------------------------------------
# Validation


def validate_rows(
    rows: list, fields: Mapping[str, type], origin: str, *, lines: Sequence[int] | None = None
) -> None:
    """Raises ValueError naming the source, row and field of the first problem found.

    `lines`: each row's 1-based line in the file `origin` (JSON-lines files): the errors say `line N`;
    without it they say `row i` with the 0-based index of the row.
    """
    if len(rows) == 0:
        raise ValueError(f"{origin}: the data set is empty")
    locate: Callable[[int], str] = (
        (lambda i: f"line {lines[i]}") if lines is not None else (lambda i: f"row {i}")
    )
    n_lists: dict[str, tuple[int, int]] = {}  # field -> (row of first list, its length)
    for i, row in enumerate(rows):
        where = f"{origin}, {locate(i)}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for name, kind in fields.items():
            if name not in row or row[name] is None:
                raise ValueError(f"{where}: missing field {name!r} (row has: {sorted(row)})")
            value = row[name]
            if kind is str:
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{where}: field {name!r} must be a non-empty string, got {value!r:.60}")
            elif kind is list:
                if not isinstance(value, list) or not value:
                    raise ValueError(f"{where}: field {name!r} must be a non-empty list of strings")
                for j, v in enumerate(value):
                    if not isinstance(v, str) or not v.strip():
                        raise ValueError(f"{where}: field {name!r}[{j}] must be a non-empty string")
                first, n_first = n_lists.setdefault(name, (i, len(value)))
                if len(value) != n_first:
                    raise ValueError(
                        f"{where}: field {name!r} has {len(value)} entries but {locate(first)} has {n_first}"
                    )
