"""Loading and validating QA sets (TOFU layout) and MUSE text sets; rows are plain dicts.

Sources: a local folder of JSON/JSONL files (file name = config name, e.g. `../shared/data/tofu`, or
`<folder>/<config>/<split>.jsonl` for the MUSE layout), a single `.json`/`.jsonl` file, a
`datasets.Dataset`/`DatasetDict`, a list of dicts, or a hub name such as "locuslab/TOFU" (loaded with
`datasets.load_dataset`; this is the only place that can touch the network).
"""

import json
import os
import re
from collections.abc import Iterable, Mapping
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

_TOFU_FORGET = {"forget01": "01", "forget05": "05", "forget10": "10"}
_TOFU_RETAIN = {"01": "retain99", "05": "retain95", "10": "retain90"}

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


def tofu_splits(forget_split: str) -> dict[str, str]:
    """TOFU config names that go with a forget split (forget01 -> retain99, holdout01, ...)."""
    if forget_split not in _TOFU_FORGET:
        raise ValueError(
            f"unknown TOFU forget split {forget_split!r}; expected one of {sorted(_TOFU_FORGET)}"
        )
    pct = _TOFU_FORGET[forget_split]
    return {
        "full": "full",
        "forget": forget_split,
        "retain": _TOFU_RETAIN[pct],
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
    rows, origin = load_rows(source, config, split, hub=hub)
    validate_rows(rows, fields, origin)
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


def load_rows(source: Any, config: str | None, split: str, *, hub: bool | None = None) -> tuple[list, str]:
    """Raw rows and a human description of where they came from (for error messages)."""
    if isinstance(source, list | tuple):
        return list(source), "<list of rows>"
    if _is_hf_dataset(source):
        return _rows_from_dataset(source, split), f"<datasets object, split {split!r}>"
    if not isinstance(source, str | os.PathLike):
        raise ValueError(f"unsupported data source of type {type(source).__name__}")
    path = Path(os.path.expanduser(str(source)))
    if hub is True or (hub is None and not path.exists() and _looks_like_hub_name(str(source))):
        return _load_hub(str(source), config, split), f"hub:{source}/{config}/{split}"
    if not path.exists():
        raise FileNotFoundError(f"data source {str(source)!r} does not exist")
    if path.is_file():
        return read_json_rows(path), str(path)
    if config is None:
        raise ValueError(f"data source {str(path)!r} is a folder: give a config name (e.g. 'forget01')")
    file = resolve_config_file(path, config, split)
    return read_json_rows(file), str(file)


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


def read_json_rows(path: Path) -> list:
    """A JSON array of objects, or JSON lines (blank lines skipped); errors name file and line."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
        return list(data)
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: invalid JSON: {e.msg}") from None
    return rows


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
    import datasets  # lazy: only when the user asked for the hub

    return datasets.load_dataset(name, config, split=split).to_list()


# ---------------------------------------------------------------------------------------------------
# Validation


def validate_rows(rows: list, fields: Mapping[str, type], origin: str) -> None:
    """Raises ValueError naming the source, row and field of the first problem found."""
    if len(rows) == 0:
        raise ValueError(f"{origin}: the data set is empty")
    n_lists: dict[str, tuple[int, int]] = {}  # field -> (row of first list, its length)
    for i, row in enumerate(rows):
        where = f"{origin}, row {i}"
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
                first = n_lists.setdefault(name, (i, len(value)))
                if len(value) != first[1]:
                    raise ValueError(
                        f"{where}: field {name!r} has {len(value)} entries but row {first[0]} has {first[1]}"
                    )
