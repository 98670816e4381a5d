"""Training data for the engine: load + validate + tokenize once, then deterministic stacked batches.

Axes: M micro-batches per optimizer step, B micro-batch size, T length (one bucket per step).
Unlearning epochs are anchored on the forget set; each forget item gets a seeded random retain partner
(and, for IdkDPO, a seeded "I don't know" answer), a pure function of (seed, epoch, index), so a resumed
run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cel_jax import data

IDK_FILE = Path(__file__).resolve().parent / "idk.jsonl"


def parse_rows(spec: str | None, n: int) -> list[int] | None:
    """'0:400,3960:4000' or '0:80:4' -> row indices (python slices or single rows, comma separated)."""
    if not spec:
        return None
    out: list[int] = []
    for part in str(spec).split(","):
        bounds = part.split(":")
        if len(bounds) == 1:
            out.append(int(bounds[0]))
            continue
        if len(bounds) > 3:
            raise ValueError(f"row selection {spec!r}: {part!r} is not a python slice a:b or a:b:c")
        a, b, c = (int(x) if x.strip() else None for x in (bounds + [""])[:3])
        if c is not None and c < 1:
            raise ValueError(f"row selection {spec!r}: the step of {part!r} must be positive")
        out.extend(range(*slice(a, b, c).indices(n)))
    if not out:
        raise ValueError(f"row selection {spec!r} selects no rows")
    return out


def _select(rows: list[dict], rows_spec: str | None, split: str, source) -> list[dict]:
    """The rows `rows_spec` names (all when empty); an empty result is an error."""
    sel = parse_rows(rows_spec, len(rows))
    if sel is not None:
        if max(sel) >= len(rows):
            raise ValueError(f"row selection {rows_spec!r} exceeds the {len(rows)} rows of {split!r}")
        rows = [rows[i] for i in sel]
    if not rows:
        raise ValueError(f"split {split!r} of {source!r} is empty")
    return rows


def _load(cfg_data, split: str, rows_spec: str | None = None) -> list[dict]:
    src = cfg_data.source
    if src == "demo":
        src = data.DATA_DIR
        split = data.DEMO_SPLITS.get(split, split)
    rows = data.load_qa(src, split)
    return _select(rows, rows_spec, split, cfg_data.source)


FORMATS = ("qa", "text")  # question-answer rows (TOFU, the demo) | raw text chunks (MUSE raw/forget)


def _data_format(cfg_data) -> str:
    fmt = cfg_data.get("format", "qa")
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {fmt!r}")
    return fmt


def _load_text(cfg_data, split: str, rows_spec: str | None = None) -> list[dict]:
    """Raw-text rows of `<source>/<data.text_config>/<split>` (MUSE: raw/forget, raw/retain1)."""
    rows = data.load_text(cfg_data.source, cfg_data.get("text_config", "raw"), split)
    return _select(rows, rows_spec, split, cfg_data.source)


@dataclasses.dataclass
class TrainData:
    forget_rows: list[dict]
    retain_rows: list[dict]
    forget_items: list[dict]  # anchor set (the fine-tuning set in finetune mode)
    retain_items: list[dict]
    idk_items: list[list[dict]]  # [variant][forget index]
    pad_id: int
    buckets: tuple[int, ...]
    seed: int
    shuffle: bool
    compat_mask: bool
    paired: bool
    system_prompt: str | None

    @property
    def n_anchor(self) -> int:
        return len(self.forget_items)

    def _indices(self, cursor: data.Cursor, batch_size: int):
        if self.paired:
            return data.next_pairs(
                len(self.forget_items), len(self.retain_items), batch_size, self.seed, cursor, self.shuffle
            )
        f, w, nxt = data.next_indices(len(self.forget_items), batch_size, self.seed, cursor, self.shuffle)
        return f, None, w, nxt

    def steps_per_epoch(self, batch_size: int, n_micro: int) -> int:
        """Optimizer steps in one pass over the anchor set: ceil(ceil(n / B) / M)."""
        return math.ceil(data.steps_per_epoch(self.n_anchor, batch_size) / n_micro)

    def next_batch(self, cursor: data.Cursor, batch_size: int, n_micro: int) -> tuple[dict, data.Cursor]:
        """M micro-batches stacked as [M, B, T] (one bucket T for the whole step) and the cursor after.

        A step never crosses an epoch boundary: when the epoch runs out before M micro-batches, the
        rest are fillers (copies of the step's first micro-batch with `valid_M` 0) that the step
        ignores, so one epoch is exactly one pass whatever `grad_accum` is."""
        if cursor.position >= len(self.forget_items):
            cursor = data.Cursor(cursor.epoch + 1, 0)
        epoch, plan = cursor.epoch, []
        while len(plan) < n_micro and cursor.epoch == epoch:
            f, r, w, cursor = self._indices(cursor, batch_size)
            plan.append((f, r, w, epoch))
        n_real = len(plan)
        parts = {"forget": lambda f, r, e: [self.forget_items[i] for i in f]}
        if self.paired:
            parts["retain"] = lambda f, r, e: [self.retain_items[i] for i in r]
        if self.idk_items:
            parts["idk"] = lambda f, r, e: [self.idk_items[e % len(self.idk_items)][i] for i in f]
        chosen = {k: [fn(f, r, e) for f, r, _, e in plan] for k, fn in parts.items()}
        longest = max(len(it["input_ids"]) for mbs in chosen.values() for mb in mbs for it in mb)
        length = data.pick_bucket(longest, self.buckets)
        out: dict[str, Any] = {}
        for k, mbs in chosen.items():
            cols = [
                data.collate(
                    mb,
                    self.pad_id,
                    self.buckets,
                    weight=w,
                    length=length,
                    compat_mask=self.compat_mask,
                    keys=("input_ids", "labels"),
                )
                for mb, (_, _, w, _) in zip(mbs, plan, strict=True)
            ]
            cols += [cols[0]] * (n_micro - n_real)  # fillers: finite losses, weighted 0 by the step
            out[k] = {
                key: np.stack([c[key] for c in cols]) for key in ("input_ids", "attention_mask", "labels")
            }
        out["valid_M"] = (np.arange(n_micro) < n_real).astype(np.float32)
        return out, cursor

    def retain_batches(self, batch_size: int, max_items: int | None = None) -> Iterator[dict]:
        """The retain set in order (ε = (1+α)·L_r(π_ref) before training)."""
        items = self.retain_items[: max_items or None]
        yield from self._ordered(items, batch_size)

    def partner_batches(self, epoch: int, batch_size: int) -> Iterator[dict]:
        """The retain partners of one epoch (epoch-mode dual update)."""
        idx = data.retain_partners(len(self.forget_items), len(self.retain_items), self.seed, epoch)
        yield from self._ordered([self.retain_items[i] for i in idx], batch_size)

    def _ordered(self, items, batch_size):
        for idx, w in data.sequential_batches(len(items), batch_size):
            b = data.collate(
                [items[i] for i in idx],
                self.pad_id,
                self.buckets,
                weight=w,
                compat_mask=self.compat_mask,
                keys=("input_ids", "labels"),
            )
            yield {k: b[k] for k in ("input_ids", "attention_mask", "labels")}


def load_idk_answers(path: Path = IDK_FILE) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def prepare_data(cfg, tokenizer, mode: str, needs_idk: bool = False) -> TrainData:
    """Load, validate and tokenize everything the run needs; every data error surfaces here."""
    d = cfg.data
    template = data.make_template(d.template.to_dict() if hasattr(d.template, "to_dict") else d.template)
    if d.get("system_prompt", "default") != "default":
        template = dataclasses.replace(template, system_prompt=d.system_prompt)
    enc: dict[str, Any] = dict(
        max_length=d.max_length, on_too_long=d.get("on_too_long", "error"), on_no_target="error"
    )
    text = _data_format(d) == "text"
    load = _load_text if text else _load
    if mode == "finetune":
        forget_rows = load(d, d.train_split, d.get("train_rows"))
        retain_rows: list[dict] = []
    else:
        forget_rows = load(d, d.forget_split, d.get("forget_rows"))
        retain_rows = load(d, d.retain_split, d.get("retain_rows"))
    if text:  # OU's PretrainingDataset: the split's texts joined, cut into max_length-token chunks
        encode = lambda rows: data.encode_pretraining(tokenizer, [r["text"] for r in rows], d.max_length)
    else:
        encode = lambda rows: data.encode_qa_rows(tokenizer, rows, template, **enc)
    forget_items, retain_items = encode(forget_rows), encode(retain_rows)
    idk_items: list[list[dict]] = []
    if needs_idk and text:
        raise ValueError(
            "this method needs \"I don't know\" answers to questions: data.format='text' has none"
        )
    if needs_idk:
        answers = load_idk_answers()
        rng = np.random.default_rng(cfg.seed + 101)
        for _ in range(min(cfg.epochs, 5)):
            picks = rng.integers(0, len(answers), len(forget_rows))
            idk_items.append(
                [
                    data.encode_qa(tokenizer, r["question"], answers[j], template, **enc)
                    for r, j in zip(forget_rows, picks, strict=True)
                ]
            )
    # a text chunk is BOS + max_length tokens; a truncated QA item keeps its EOS after max_length
    longest = d.max_length + (1 if text or enc["on_too_long"] == "truncate" else 0)
    buckets = data.make_buckets(longest, multiple=d.get("bucket_multiple", 32))
    return TrainData(
        forget_rows=forget_rows,
        retain_rows=retain_rows,
        forget_items=forget_items,
        retain_items=retain_items,
        idk_items=idk_items,
        pad_id=data.pad_id_of(tokenizer),
        buckets=buckets,
        seed=cfg.seed,
        shuffle=cfg.get("shuffle", True),
        compat_mask=bool(d.get("compat_mask", False)),
        paired=mode != "finetune",
        system_prompt=template.system_prompt,
    )
