"""What unlearning did to the model's answers: greedy answers to the forget and retain questions before
and after, their ROUGE-L recall against the truth (open-unlearning's `rougeL_recall`: rouge_score with
the stemmer, score(truth, answer)), a few printed examples and a short table.

Runs on process 0 only; `cfg.report` = {enabled, examples, max_new_tokens, max_questions, batch_size}.
"""

from __future__ import annotations

import numpy as np


def answers(
    model, tok, rows: list[dict], system_prompt, max_new_tokens: int, batch_size: int = 20
) -> list[str]:
    """Greedy answers in batches of `batch_size` (the KV cache of all questions at once is ~1 GB)."""
    from cel_jax.evaluation import generate
    from cel_jax.scale import hostmem

    qs = [r["question"] for r in rows]
    outs = generate.generate_text(
        model, tok, qs, max_new_tokens=max_new_tokens, system_prompt=system_prompt, batch_size=batch_size
    )
    hostmem.release()
    return outs


def rouge_recall(truths: list[str], outs: list[str]) -> list[float]:
    from cel_jax.evaluation import metrics

    return [metrics.rouge_scores(t, o)["rougeL_recall"] for t, o in zip(truths, outs, strict=True)]


def questions(td, max_questions: int | None) -> dict[str, list[dict]]:
    n = max_questions or None
    return {"forget": td.forget_rows[:n], "retain": td.retain_rows[:n]}


def snapshot(model, tok, td, rep) -> dict:
    """{"forget": {"answers", "rouge"}, "retain": {...}} for the run's questions (one generate call)."""
    qs = questions(td, rep.get("max_questions"))
    rows = qs["forget"] + qs["retain"]
    n_new, bs = int(rep.get("max_new_tokens", 48)), int(rep.get("batch_size", 20))
    outs = answers(model, tok, rows, td.system_prompt, n_new, bs)
    scores = rouge_recall([r["answer"] for r in rows], outs)
    k = len(qs["forget"])
    return {
        "forget": {"answers": outs[:k], "rouge": scores[:k]},
        "retain": {"answers": outs[k:], "rouge": scores[k:]},
    }


def summary_fields(before: dict, after: dict) -> dict:
    return {
        f"{part}_rouge_{when}": float(np.mean(snap[part]["rouge"]))
        for part in ("forget", "retain")
        for when, snap in (("before", before), ("after", after))
    }


def render(td, before: dict, after: dict, summary: dict, rep) -> str:
    """Examples (truth, before, after) and the table, as printed at the end of the run."""
    qs = questions(td, rep.get("max_questions"))
    lines = []
    n_ex = int(rep.get("examples", 2))
    for part in ("forget", "retain"):
        for i, row in enumerate(qs[part][:n_ex]):
            lines += [
                f"[{part}] Q: {row['question']}",
                f"  truth:  {row['answer']}",
                f"  before: {before[part]['answers'][i]}",
                f"  after:  {after[part]['answers'][i]}",
            ]
    f = summary_fields(before, after)
    ratio = lambda a, b: f"{a / b:.2f}x" if b > 0 else "n/a"
    lines += [
        "",
        f"{'':28s}{'before':>10s}{'after':>10s}{'after/before':>14s}",
        f"{'forget ROUGE-L recall (' + str(len(qs['forget'])) + ' Q)':28s}"
        f"{f['forget_rouge_before']:10.3f}{f['forget_rouge_after']:10.3f}"
        f"{ratio(f['forget_rouge_after'], f['forget_rouge_before']):>14s}",
        f"{'retain ROUGE-L recall (' + str(len(qs['retain'])) + ' Q)':28s}"
        f"{f['retain_rouge_before']:10.3f}{f['retain_rouge_after']:10.3f}"
        f"{ratio(f['retain_rouge_after'], f['retain_rouge_before']):>14s}",
    ]
    if "final_retain_loss" in summary:
        ok = "yes" if summary["constraint_satisfied"] else "NO"
        lines += [
            f"{'ε (retain-loss bound)':28s}{summary['eps']:10.4f}",
            f"{'final retain loss':28s}{summary['final_retain_loss']:10.4f}   (mean of the last epoch)",
            f"{'constraint satisfied':28s}{ok:>10s}",
        ]
    return "\n".join(lines)
