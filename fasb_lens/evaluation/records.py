"""A `reproduce` run's records on disk: their keys, the fold folders, and loading a run back.

``records.jsonl`` holds one line per (seed, fold, question, task, policy) and
``judgements.jsonl`` one per (seed, fold, question, policy, judge), ``seed`` being the
split seed whose cross-validation the record belongs to; a generation record carries the
whole trace, so notebooks and figures read traces back exactly as generated. Records
written before the field ``policy`` was named so (it was ``method``) are read as if it
were, and records written before runs had several split seeds (without ``seed``) as the
run's first (and only) seed's.

Each fold's artifacts and calibration live in ``folds/seed{S}/fold{k}/``; run folders
written before that have ``folds/fold{k}/`` (one seed), which is still read.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """A run record's key: one per (seed, fold, question, task, policy)."""
    return (
        record["seed"],
        record["fold"],
        record["question_id"],
        record["task"],
        record["policy"],
    )


def judgement_key(record: dict[str, Any]) -> tuple:
    """A judgement's key: one per (seed, fold, question, policy, judge)."""
    return (
        record["seed"],
        record["fold"],
        record["question_id"],
        record["policy"],
        record["judge"],
    )


def _legacy(out: str | Path) -> bool:
    """Whether a run folder keeps its folds without a seed level (``folds/fold{k}``)."""
    return any(path.is_dir() for path in (Path(out) / storage.FOLDS_DIR).glob("fold*"))


def fold_folder(out: str | Path, fold: int, seed: int | None = None) -> Path:
    """The folder of one fold of one split seed: ``folds/seed{S}/fold{k}``, or in a run
    folder written before seeds had a level, ``folds/fold{k}``. Without ``seed``, the
    run's only seed (or its first, by the names of its folders)."""
    folds = Path(out) / storage.FOLDS_DIR
    if _legacy(out):
        return folds / f"fold{fold}"
    if seed is None:
        seeds = [seed for seed, _, _ in fold_folders(out)]
        if not seeds:
            raise FileNotFoundError(f"{folds} holds no fold folders")
        seed = seeds[0]
    return folds / f"seed{seed}" / f"fold{fold}"


def fold_folders(out: str | Path) -> list[tuple[int | None, int, Path]]:
    """Every fold folder of a run as ``(seed, fold, folder)``, by seed then fold as
    numbers (``seed`` is ``None`` in a run folder without a seed level)."""
    folds = Path(out) / storage.FOLDS_DIR
    if _legacy(out):
        found = [(None, _number(path.name, "fold"), path) for path in folds.glob("fold*")]
    else:
        found = [
            (_number(seed.name, "seed"), _number(path.name, "fold"), path)
            for seed in folds.glob("seed*")
            for path in seed.glob("fold*")
        ]
    found = [row for row in found if row[1] is not None and row[2].is_dir()]
    return sorted(found, key=lambda row: (row[0] if row[0] is not None else -1, row[1]))


def _number(name: str, prefix: str) -> int | None:
    rest = name[len(prefix) :]
    return int(rest) if name.startswith(prefix) and rest.isdigit() else None


def generation_record(
    seed: int, fold: int, question: TruthfulQAQuestion, policy: str, trace: GenerationTrace
) -> dict[str, Any]:
    """A generation record: the answer, whether it triggered, and the whole trace (but the
    prompt, which the run's settings rebuild)."""
    return {
        "seed": seed,
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


def _with_seed(seed: int | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """:func:`upgrade_record`, and a record without a split seed given ``seed``."""

    def upgrade(record: dict[str, Any]) -> dict[str, Any]:
        record = upgrade_record(record)
        if "seed" not in record:
            record = {"seed": seed, **record}
        return record

    return upgrade


def run_logs(out: str | Path, seed: int | None = None) -> tuple[storage.JsonlLog, storage.JsonlLog]:
    """A run directory's records and judgements logs; records that name no split seed
    (written before runs had several) read as ``seed``'s."""
    out, upgrade = Path(out), _with_seed(seed)
    return (
        storage.JsonlLog(out / storage.RECORDS, record_key, upgrade=upgrade),
        storage.JsonlLog(out / storage.JUDGEMENTS, judgement_key, upgrade=upgrade),
    )


def load_run(out: str | Path) -> tuple[ExperimentConfig, list[dict], list[dict]]:
    """A run directory's config, records and judgements (for notebooks and figures)."""
    out = Path(out)
    data = storage.read_json(out / storage.RUN_CONFIG, "the settings of a `reproduce` run")
    config = ExperimentConfig.from_dict(data)
    records, judgements = run_logs(out, config.seeds[0])
    return config, records.values(), judgements.values()


def load_fold_artifacts(
    out: str | Path, fold: int, seed: int | None = None
) -> tuple[HeadProbes, Steering]:
    """A fold's probes and steering (of split seed ``seed``; by default the run's first)."""
    folder = fold_folder(out, fold, seed)
    return HeadProbes.load(folder), Steering.load(folder)
