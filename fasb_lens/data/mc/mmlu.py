"""MMLU: four-choice questions on 57 subjects, from elementary mathematics to law.

The prompt names the subject and asks the question; each choice's own text (never its
letter) is scored as the answer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from fasb_lens.data._files import DataError, read_text, require_dir
from fasb_lens.data.mc._common import OptionPrompt, Record, finish, same_prefix
from fasb_lens.data.mc.registry import MultipleChoiceDataset, register
from fasb_lens.data.schema import MultipleChoiceItem

MMLU_TEMPLATE = "The following is a question about {subject}.\n\nQuestion: {question}\nAnswer:"

_MMLU_COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")
_MMLU_INDEX_ANSWERS = {str(index): index for index in range(4)}
_MMLU_LETTER_ANSWERS = {letter: index for index, letter in enumerate("ABCD")}

_MMLU_WHAT = "an MMLU CSV file (question, 4 choices, answer)"


def load_mmlu(
    path: str | Path, *, split: str = "test", subjects: Iterable[str] | None = None
) -> list[MultipleChoiceItem]:
    """Load MMLU from a folder of per-subject CSV files.

    ``path`` is the MMLU root (with ``test/``, ``dev/``, ``val/`` subfolders; ``split``
    picks one) or directly a folder of ``{subject}_{split}.csv`` files (else of any
    ``*.csv``). Each file is either CSV with the header
    ``question,choice0,choice1,choice2,choice3,answer`` and a 0-based answer index, or
    the original release's CSV without a header and an answer letter ``A``-``D``.

    Each row becomes an item with ``id="mmlu-{subject}-{row}"``, ``context`` the
    question, ``options`` the four choices, ``label`` the answer's index and
    ``extra={"subject": subject}``; the subject is the file name without ``_{split}.csv``.
    ``subjects`` keeps only those subjects. Files are read in name order.
    """
    folder = _mmlu_folder(path, split)
    files = _mmlu_files(folder, split)
    if subjects is not None:
        files = _select_subjects(folder, files, subjects)
    items = [
        _mmlu_item(record, answers, subject)
        for subject, file in files.items()
        for record, answers in _mmlu_records(file)
    ]
    return finish(folder, f"MMLU {split} files", items)


def _mmlu_folder(path: str | Path, split: str) -> Path:
    root = require_dir(path, "an MMLU folder (with test/, dev/, val/) or a folder of CSV files")
    return root / split if (root / split).is_dir() else root


def _mmlu_files(folder: Path, split: str) -> dict[str, Path]:
    """Subject name to CSV file, in file-name order."""
    files = sorted(folder.glob(f"*_{split}.csv")) or sorted(folder.glob("*.csv"))
    if not files:
        raise DataError(
            folder, f"has no {split}/ subfolder and no CSV files; expected MMLU {split} files"
        )
    return {file.stem.removesuffix(f"_{split}"): file for file in files}


def _select_subjects(
    folder: Path, files: Mapping[str, Path], subjects: Iterable[str]
) -> dict[str, Path]:
    wanted = [subjects] if isinstance(subjects, str) else list(subjects)
    unknown = [subject for subject in wanted if subject not in files]
    if unknown:
        raise DataError(folder, f"unknown MMLU subject(s) {unknown}; available: {list(files)}")
    return {subject: file for subject, file in files.items() if subject in wanted}


def _mmlu_records(path: Path) -> Iterator[tuple[Record, Mapping[str, int]]]:
    """Yield each row of an MMLU CSV with the answer scheme of its file.

    A file that starts with the header ``question,choice0,...,answer`` has 0-based answer
    indices; a file without a header (the original release) has answer letters A-D.
    """
    reader = csv.reader(io.StringIO(read_text(path, _MMLU_WHAT), newline=""))
    try:
        rows = list(reader)
    except csv.Error as error:
        raise DataError(
            path, f"is not valid CSV ({error})", where=f"line {reader.line_num}"
        ) from None
    has_header = bool(rows) and [name.strip() for name in rows[0]] == list(_MMLU_COLUMNS)
    if has_header:
        rows = rows[1:]
    if not rows:
        raise DataError(path, f"has no rows; expected {_MMLU_WHAT}")
    answers = _MMLU_INDEX_ANSWERS if has_header else _MMLU_LETTER_ANSWERS
    for number, fields in enumerate(rows, start=1):
        where = f"row {number}"
        if not fields or all(not field.strip() for field in fields):
            raise DataError(path, "empty row; remove it", where=where)
        if len(fields) != len(_MMLU_COLUMNS):
            raise DataError(
                path,
                f"has {len(fields)} fields; expected {len(_MMLU_COLUMNS)} "
                f"({', '.join(_MMLU_COLUMNS)})",
                where=where,
            )
        yield Record(path, where, number, dict(zip(_MMLU_COLUMNS, fields, strict=True))), answers


def _mmlu_item(record: Record, answers: Mapping[str, int], subject: str) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=f"mmlu-{subject}-{record.number}",
        dataset="mmlu",
        context=record.value("question"),
        options=tuple(record.value(column) for column in _MMLU_COLUMNS[1:5]),
        label=record.label("answer", answers),
        extra={"subject": subject},
    )


def _option_prompts(item: MultipleChoiceItem) -> list[OptionPrompt]:
    if not item.extra.get("subject"):
        raise ValueError(f"MMLU item {item.id!r} has no extra['subject']")
    subject = item.extra["subject"].replace("_", " ")
    prefix = MMLU_TEMPLATE.format(subject=subject, question=item.context)
    return same_prefix(prefix, item.options)


register(
    MultipleChoiceDataset(
        name="mmlu",
        load=load_mmlu,
        option_prompts=_option_prompts,
        description=(
            'MMLU: "The following is a question about {subject}.\\n\\nQuestion: {question}'
            '\\nAnswer:", scoring " {choice text}" (no letters)'
        ),
        default_path="mmlu",
    )
)
