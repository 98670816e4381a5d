"""TOFU rows and items: the sets the jobs need (local JSONL folder or the hub), `subsets` row selection,
and the encoder of question / answer pairs with the config's template.

Set names (`QA_SETS`): forget, retain, ra (real authors), wf (world facts), each a TOFU "*_perturbed"
config; holdout (MIA non-members). The question field follows `question_key` on forget and retain only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from cel_jax import data as D
from cel_jax.data.train_data import parse_rows

# Short set names -> (TOFU config key in data.tofu_splits, log prefix, question field follows question_key).
QA_SETS = {
    "forget": ("forget_perturbed", "forget", True),
    "retain": ("retain_perturbed", "retain", True),
    "ra": ("real_authors_perturbed", "ra", False),
    "wf": ("world_facts_perturbed", "wf", False),
}
_SUBSET_SETS = ("forget", "retain", "ra", "wf", "holdout")


def parse_subsets(spec: str | None) -> dict[str, str]:
    """'retain=0:80:4;ra=0:100:5' -> {'retain': '0:80:4', 'ra': '0:100:5'} (validated names and slices)."""
    if not spec:
        return {}
    out = {}
    for part in str(spec).split(";"):
        name, sep, rows = (x.strip() for x in part.partition("="))
        if not sep or name not in _SUBSET_SETS or not rows:
            raise ValueError(
                f"subsets {spec!r}: {part!r} is not 'set=rows' with set one of {list(_SUBSET_SETS)}"
            )
        parse_rows(rows, 10**9)  # syntax check; bounds are checked against the set's length
        out[name] = rows
    return out


def _subset(rows: list[dict], spec: str, name: str) -> list[dict]:
    sel = parse_rows(spec, len(rows))
    if max(sel) >= len(rows):
        raise ValueError(f"subsets: {name}={spec} exceeds the {len(rows)} items of the {name} set")
    return [rows[i] for i in sel]


def load_sets(cfg: Mapping[str, Any], need: set[str]) -> dict[str, list[dict]]:
    """Rows of the TOFU configs the jobs need, cut to max_items."""
    splits = D.tofu_splits(cfg["forget_split"])
    if cfg["holdout_split"]:
        splits["holdout"] = cfg["holdout_split"]
    qk = cfg["question_key"]
    extra = (qk,) if qk != "question" else ()
    rows = {}
    for short, (key, _, follows) in QA_SETS.items():
        if (
            short in need
            or f"gen:{short}" in need
            or (short == "forget" and need & {"gradnorm", "reference"})
        ):
            rows[short] = D.load_qa(cfg["data_dir"], splits[key], extra_fields=extra if follows else ())
    if need & {"holdout", "gradnorm", "reference"}:
        rows["holdout"] = D.load_qa(cfg["data_dir"], splits["holdout"], schema="qa")
    n = cfg["max_items"]
    rows = {k: v[:n] if n else v for k, v in rows.items()}
    for name, spec in parse_subsets(cfg.get("subsets")).items():
        if name in rows:
            rows[name] = _subset(rows[name], spec, name)
    return rows


def encoder(tok, cfg: Mapping[str, Any]) -> Callable[..., dict]:
    """enc(question, answer, generate=False) -> item, with the config's template, system prompt and length."""
    template = D.make_template(cfg["template"])
    if template.apply_chat_template and cfg["system_prompt"] is not None:
        template = dataclasses.replace(template, system_prompt=cfg["system_prompt"])

    def enc(q: str, a: str, generate: bool = False) -> dict:
        return D.encode_qa(tok, q, a, template, max_length=int(cfg["max_length"]), generate=generate)

    return enc
