"""Per-question records of a run as one flat table: what a reader needs to recompute or audit.

``records.jsonl`` and ``judgements.jsonl`` hold everything (traces, readings, timings) but
are too large to commit for a full run; ``per_question.csv`` keeps, for every record, the
values the summary is computed from: one row per (seed, fold, question, task, policy) with
MC1/MC2/MC3 for multiple choice, the answer and whether and where it was steered for
generation, and each judge's verdict and score on that answer. Averaging a column over a
policy's rows (a random control's draws first averaged per question) gives the table's
number; pairing two policies' rows by (seed, question) gives its comparisons.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fasb_lens.evaluation.tables import Table
from fasb_lens.evaluation.uncertainty import MC_METRICS

KEY_COLUMNS = ("seed", "fold", "question_id", "task", "policy")
"""Whose row it is (``policy`` names a control's draw, as in ``fasb_random/3``)."""
GENERATION_COLUMNS = ("answer", "triggered", "trigger_step", "trigger_p_true", "strength")
"""A generation's answer, and for a steering policy where it was steered and how hard."""


def _verdict(judgement: dict[str, Any]) -> Any:
    """A judge's verdict on the question it asks: truthful for a truth judge, informative
    for an info judge (the other is ``None``); empty where it failed."""
    value = judgement["truthful"]
    value = judgement["informative"] if value is None else value
    return "" if value is None else int(bool(value))


def per_question_table(
    records: Iterable[dict[str, Any]], judgements: Iterable[dict[str, Any]]
) -> Table:
    """Every record of a run as a row, with the judges' verdicts on its answer (a judge's
    column is empty where it gave none, ``JUDGE score`` its raw score)."""
    judged: dict[tuple, dict[str, dict[str, Any]]] = {}
    for j in judgements:
        key = (j.get("seed"), j["fold"], j["question_id"], "generation", j["policy"])
        judged.setdefault(key, {})[j["judge"]] = j
    judges = sorted({name for verdicts in judged.values() for name in verdicts})
    head = [*KEY_COLUMNS, *MC_METRICS, *GENERATION_COLUMNS]
    head += [column for name in judges for column in (name, f"{name} score")]
    table = Table(head)
    for record in records:
        key = tuple(record.get(column) for column in KEY_COLUMNS)
        row: list[Any] = list(key)
        row += [record.get(metric, "") for metric in MC_METRICS]
        if record["task"] == "generation":
            trace = record.get("trace") or {}
            row += [
                record.get("answer", ""),
                int(bool(record.get("triggered"))),
                _blank(trace.get("trigger_step")),
                _blank(trace.get("trigger_p_true")),
                _blank(trace.get("strength")),
            ]
        else:
            row += [""] * len(GENERATION_COLUMNS)
        verdicts = judged.get(key, {})
        for name in judges:
            j = verdicts.get(name)
            row += ["", ""] if j is None else [_verdict(j), _blank(j.get("score"))]
        table.rows.append(row)
    return table


def _blank(value: Any) -> Any:
    return "" if value is None else value
