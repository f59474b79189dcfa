"""TruthfulQA and the built-in mini set, as :class:`TruthfulQAQuestion` lists.

TruthfulQA ships as a CSV (UTF-8 with a byte-order mark; several reference answers per
cell separated by ``;``) and a ``mc_task.json`` with the multiple-choice targets (MC1:
one true answer among false ones; MC2: several true and false). Questions get stable ids
from their CSV row (``tqa-0000`` is the first), so results, splits and artifacts can
refer to them across runs. The mini set is a small set of common-misconception
questions written for fasb_lens, in the same CSV schema, packaged with the library.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from fasb_lens.data._files import (
    DataError,
    read_csv_rows,
    read_text,
    require_file,
    require_value,
)
from fasb_lens.data.schema import TruthfulQAQuestion

logger = logging.getLogger(__name__)

CSV_NAME = "TruthfulQA.csv"
MC_TASK_NAME = "mc_task.json"
REQUIRED_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")
HUB_NAME = "truthfulqa/truthful_qa"
MINI_RESOURCE = "mini_truthfulqa.csv"


def split_answers(cell: str) -> tuple[str, ...]:
    """The answers of one ``;``-separated cell; empty pieces (trailing ``;``) are dropped."""
    return tuple(piece.strip() for piece in cell.split(";") if piece.strip())


def load_truthfulqa(
    path: str | Path, *, mc_task: str | Path | None = None, id_prefix: str = "tqa"
) -> list[TruthfulQAQuestion]:
    """Load TruthfulQA's CSV, with MC targets from ``mc_task.json`` when available.

    Args:
        path: the CSV file, or a folder holding ``TruthfulQA.csv``; an ``mc_task.json``
            in the same folder is loaded too.
        mc_task: an explicit ``mc_task.json``; every CSV question must have an entry.
        id_prefix: questions are numbered ``{id_prefix}-0000``, ... in CSV order.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CSV_NAME
    if mc_task is None and (path.parent / MC_TASK_NAME).is_file():
        mc_task = path.parent / MC_TASK_NAME
    questions = _read_questions(path, id_prefix)
    if mc_task is not None:
        questions = _attach_mc_targets(questions, Path(mc_task))
    return questions


def load_mini_truthfulqa() -> list[TruthfulQAQuestion]:
    """The built-in mini set: common misconceptions with true and false answers."""
    resource = resources.files("fasb_lens.data") / "resources" / MINI_RESOURCE
    with resources.as_file(resource) as csv_path:
        return _read_questions(csv_path, "mini")


def _read_questions(path: Path, id_prefix: str) -> list[TruthfulQAQuestion]:
    what = "a TruthfulQA-style CSV (Question, Best Answer, Correct Answers, Incorrect Answers)"
    questions = []
    for number, row in read_csv_rows(path, what, required=REQUIRED_COLUMNS):
        where = f"row {number}"
        correct = split_answers(require_value(path, where, row, "Correct Answers"))
        incorrect = split_answers(require_value(path, where, row, "Incorrect Answers"))
        if not correct or not incorrect:
            column = "Correct Answers" if not correct else "Incorrect Answers"
            raise DataError(path, f"field {column!r} holds no answer", where=where)
        questions.append(
            TruthfulQAQuestion(
                id=f"{id_prefix}-{number - 1:04d}",
                question=require_value(path, where, row, "Question"),
                best_answer=require_value(path, where, row, "Best Answer"),
                correct_answers=correct,
                incorrect_answers=incorrect,
                category=row.get("Category", "").strip(),
                type=row.get("Type", "").strip(),
                source=row.get("Source", "").strip(),
            )
        )
    if not questions:
        raise DataError(path, "holds no questions; expected at least one data row")
    _check_unique_questions(path, questions)
    return questions


def _check_unique_questions(path: Path, questions: list[TruthfulQAQuestion]) -> None:
    seen: dict[str, str] = {}
    for question in questions:
        key = question.question.strip()
        if key in seen:
            raise DataError(path, f"question {key!r} appears twice ({seen[key]} and {question.id})")
        seen[key] = question.id


def _targets(
    path: Path, where: str, entry: dict[str, Any], key: str
) -> tuple[tuple[str, int], ...]:
    targets = entry.get(key)
    if not isinstance(targets, dict) or not targets:
        raise DataError(path, f"{key!r} must map answers to 0/1", where=where)
    bad = [label for label in targets.values() if label not in (0, 1)]
    if bad:
        raise DataError(path, f"{key!r} has labels {bad}; expected 0 or 1", where=where)
    if 1 not in targets.values() or 0 not in targets.values():
        raise DataError(path, f"{key!r} needs at least one true and one false answer", where=where)
    return tuple((answer, int(label)) for answer, label in targets.items())


def load_mc_task(path: str | Path) -> dict[str, tuple[tuple[tuple[str, int], ...], ...]]:
    """``mc_task.json`` as ``{question: (mc1_targets, mc2_targets)}``, in the file's order."""
    path = require_file(path, "TruthfulQA's mc_task.json")
    try:
        entries = json.loads(read_text(path, "TruthfulQA's mc_task.json"))
    except json.JSONDecodeError as error:
        raise DataError(
            path, f"is not valid JSON ({error.msg})", where=f"line {error.lineno}"
        ) from None
    if not isinstance(entries, list):
        raise DataError(path, "must hold a JSON list of {question, mc1_targets, mc2_targets}")
    table = {}
    for index, entry in enumerate(entries):
        where = f"item {index}"
        if not isinstance(entry, dict) or not str(entry.get("question", "")).strip():
            raise DataError(path, "expected an object with a non-empty 'question'", where=where)
        mc1 = _targets(path, where, entry, "mc1_targets")
        if sum(label for _, label in mc1) != 1:
            raise DataError(path, "'mc1_targets' must have exactly one true answer", where=where)
        question = entry["question"].strip()
        if question in table:
            raise DataError(path, f"question {question!r} appears twice", where=where)
        table[question] = (mc1, _targets(path, where, entry, "mc2_targets"))
    return table


def _attach_mc_targets(
    questions: list[TruthfulQAQuestion], mc_task: Path
) -> list[TruthfulQAQuestion]:
    table = load_mc_task(mc_task)
    order = {text: index for index, text in enumerate(table)}
    attached = []
    for question in questions:
        key = question.question.strip()
        if key not in table:
            raise DataError(
                mc_task, f"has no entry for question {question.id} ({question.question!r})"
            )
        mc1, mc2 = table[key]
        attached.append(replace(question, mc1_targets=mc1, mc2_targets=mc2, mc_order=order[key]))
    unused = len(table) - len(attached)
    if unused:
        logger.warning("%s: %d entries match no loaded question and are unused", mc_task, unused)
    return attached


def load_truthfulqa_hub(name: str = HUB_NAME) -> list[TruthfulQAQuestion]:
    """TruthfulQA from the HuggingFace hub (needs ``datasets`` and the network or its cache).

    Joins the ``generation`` and ``multiple_choice`` configurations by question text;
    ids follow the ``generation`` order, which is the CSV's.
    """
    try:
        from datasets import load_dataset
    except ImportError as error:
        raise ImportError(
            "loading TruthfulQA from the hub needs `datasets`: pip install 'fasb-lens[hub]'"
        ) from error
    generation = load_dataset(name, "generation", split="validation")
    choices = load_dataset(name, "multiple_choice", split="validation")

    def pairs(targets: dict[str, list[Any]]) -> tuple[tuple[str, int], ...]:
        return tuple(zip(targets["choices"], map(int, targets["labels"]), strict=True))

    mc = {
        row["question"].strip(): (pairs(row["mc1_targets"]), pairs(row["mc2_targets"]), order)
        for order, row in enumerate(choices)
    }
    questions = []
    for index, row in enumerate(generation):
        mc1, mc2, mc_order = mc.get(row["question"].strip(), ((), (), None))
        questions.append(
            TruthfulQAQuestion(
                id=f"tqa-{index:04d}",
                question=row["question"],
                best_answer=row["best_answer"],
                correct_answers=tuple(row["correct_answers"]),
                incorrect_answers=tuple(row["incorrect_answers"]),
                category=row.get("category", ""),
                type=row.get("type", ""),
                source=row.get("source", ""),
                mc1_targets=mc1,
                mc2_targets=mc2,
                mc_order=mc_order,
            )
        )
    return questions


BUNDLED = "truthfulqa"
"""The name of the TruthfulQA copy bundled with fasb_lens (:func:`bundled_truthfulqa`)."""


def bundled_truthfulqa() -> Path:
    """The folder of the bundled TruthfulQA: ``TruthfulQA.csv``, ``mc_task.json``, the
    QA primer and instruction, with their license and source."""
    return Path(str(resources.files("fasb_lens.data") / "resources" / "truthfulqa"))


def truthfulqa_folder(spec: str | Path) -> Path | None:
    """The folder the questions named by ``spec`` (as :func:`load_questions` takes it) come
    from: the bundled copy's, a named folder, a CSV's folder; ``None`` for the mini set and
    the hub, which come from no folder."""
    text = str(spec)
    if text == "mini" or text == "hub" or text.startswith("hub:"):
        return None
    if text == BUNDLED:
        return bundled_truthfulqa()
    path = Path(text)
    return path if path.is_dir() else path.parent


def load_questions(
    spec: str | Path, *, mc_task: str | Path | None = None
) -> list[TruthfulQAQuestion]:
    """Questions named by a short spec, as the command line takes them.

    ``"truthfulqa"`` is the TruthfulQA copy bundled with fasb_lens (the CSV and
    ``mc_task.json``), ``"mini"`` the built-in mini set, ``"hub"`` (or
    ``"hub:OWNER/NAME"``) TruthfulQA from the HuggingFace hub, anything else a TruthfulQA
    CSV or a folder holding one; ``mc_task`` names an explicit ``mc_task.json`` for a CSV.
    """
    text = str(spec)
    if mc_task is not None and (text in (BUNDLED, "mini") or text.startswith("hub")):
        raise DataError(mc_task, f"an mc_task file goes with a TruthfulQA CSV, not with {text!r}")
    if text == "mini":
        return load_mini_truthfulqa()
    if text == BUNDLED:
        return load_truthfulqa(bundled_truthfulqa())
    if text == "hub" or text.startswith("hub:"):
        return load_truthfulqa_hub(text[4:] or HUB_NAME)
    return load_truthfulqa(text, mc_task=mc_task)
