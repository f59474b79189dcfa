"""Judging a `reproduce` run's generated answers: every answer by every requested judge.

Each verdict is appended to ``judgements.jsonl`` under its answer's (seed, fold, question,
policy) and the judge's name, so a resumed run judges only what is not judged yet. Under
``torchrun`` each judge runs whole in one process (a judge may keep what it computed for
later chunks, e.g. the embedding judge its vectors).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tqdm.auto import tqdm

from fasb_lens import distributed, storage
from fasb_lens.data import TruthfulQAQuestion
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name
from fasb_lens.profiling import section

JUDGING_CHUNK = 64
"""Answers judged per call of a judge."""

WHERE = ("seed", "fold", "question_id", "policy")
"""The fields of a generation record a judgement names its answer by."""


def judge_answers(
    judges: tuple[str, ...],
    questions: list[TruthfulQAQuestion],
    records: storage.JsonlLog,
    judgements: storage.JsonlLog,
    *,
    progress: bool = True,
) -> None:
    """Every generation record of ``records`` by every judge in ``judges``, except those
    ``judgements`` already holds."""
    generations = [r for r in records.values() if r["task"] == "generation"]
    by_id = {question.id: question for question in questions}
    for name in distributed.share(judges):
        todo = [r for r in generations if (*(r[k] for k in WHERE), name) not in judgements]
        if not todo:
            continue
        with section(name):
            _judge_with(name, todo, by_id, judgements, progress)


def _judge_with(
    name: str,
    todo: list[dict[str, Any]],
    by_id: dict[str, TruthfulQAQuestion],
    judgements: storage.JsonlLog,
    progress: bool,
) -> None:
    """``todo`` (generation records) judged by the judge ``name``."""
    judge = judge_by_name(name)
    chunks = range(0, len(todo), JUDGING_CHUNK)
    for start in tqdm(chunks, desc=f"judge {name}", disable=not progress):
        chunk = todo[start : start + JUDGING_CHUNK]
        inputs = [
            JudgeInput(
                question=by_id[r["question_id"]].question,
                answer=r["answer"],
                correct=by_id[r["question_id"]].correct_answers,
                incorrect=by_id[r["question_id"]].incorrect_answers,
            )
            for r in chunk
        ]
        for record, verdict in zip(chunk, judge.judge_many(inputs), strict=True):
            where = {key: record[key] for key in WHERE}
            judgements.append({**where, "judge": name, **asdict(verdict)})
