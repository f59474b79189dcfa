"""A `reproduce` run's records on disk: their keys, the fold folders, and loading a run back.

``records.jsonl`` holds one line per (fold, question, task, policy) and
``judgements.jsonl`` one per (fold, question, policy, judge); a generation record carries
the whole trace, so notebooks and figures read traces back exactly as generated. Records
written before the field ``policy`` was named so (it was ``method``) are read as if it
were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fasb_lens import storage
from fasb_lens.data import TruthfulQAQuestion
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.run import upgrade_record
from fasb_lens.generation import GenerationTrace
from fasb_lens.probes import HeadProbes
from fasb_lens.steering import Steering


def record_key(record: dict[str, Any]) -> tuple:
    """A run record's key: one per (fold, question, task, policy)."""
    return (record["fold"], record["question_id"], record["task"], record["policy"])


def judgement_key(record: dict[str, Any]) -> tuple:
    """A judgement's key: one per (fold, question, policy, judge)."""
    return (record["fold"], record["question_id"], record["policy"], record["judge"])


def fold_folder(out: str | Path, fold: int) -> Path:
    return Path(out) / storage.FOLDS_DIR / f"fold{fold}"


def generation_record(
    fold: int, question: TruthfulQAQuestion, policy: str, trace: GenerationTrace
) -> dict[str, Any]:
    """A generation record: the answer, whether it triggered, and the whole trace (but the
    prompt, which the run's settings rebuild)."""
    return {
        "fold": fold,
        "question_id": question.id,
        "task": "generation",
        "policy": policy,
        "answer": trace.answer,
        "triggered": trace.triggered,
        "trace": trace.to_dict(prompt=False),
    }


def record_trace(record: dict[str, Any]) -> GenerationTrace:
    """The :class:`GenerationTrace` stored in a generation record."""
    return GenerationTrace.from_dict(record["trace"])


def run_logs(out: str | Path) -> tuple[storage.JsonlLog, storage.JsonlLog]:
    """A run directory's records and judgements logs."""
    out = Path(out)
    return (
        storage.JsonlLog(out / storage.RECORDS, record_key, upgrade=upgrade_record),
        storage.JsonlLog(out / storage.JUDGEMENTS, judgement_key, upgrade=upgrade_record),
    )


def load_run(out: str | Path) -> tuple[ExperimentConfig, list[dict], list[dict]]:
    """A run directory's config, records and judgements (for notebooks and figures)."""
    out = Path(out)
    data = storage.read_json(out / storage.RUN_CONFIG, "the settings of a `reproduce` run")
    records, judgements = run_logs(out)
    return ExperimentConfig.from_dict(data), records.values(), judgements.values()


def load_fold_artifacts(out: str | Path, fold: int) -> tuple[HeadProbes, Steering]:
    """A fold's probes and steering."""
    folder = fold_folder(out, fold)
    return HeadProbes.load(folder), Steering.load(folder)
