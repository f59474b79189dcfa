"""Loaders for the six multiple-choice datasets of the FASB evaluation.

COPA, NLI (SNLI, MultiNLI, XNLI), MMLU, SST-2, Winogrande and Story Cloze are each read
from their files into one schema, a list of :class:`MultipleChoiceItem`: the ``context``
to read, the ``options`` to choose from and the index ``label`` of the correct option.
Bad input raises a :class:`DataError` naming the file, the row, line or item, and what
was expected; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fasb_lens.data._files import (
    DataError,
    check_unique_ids,
    read_csv_rows,
    read_text,
    require_dir,
    require_file,
    require_value,
)
from fasb_lens.data.schema import MultipleChoiceItem

logger = logging.getLogger(__name__)

NLI_OPTIONS = ("entailment", "neutral", "contradiction")
SST2_OPTIONS = ("negative", "positive")

_FIRST_OR_SECOND = {"1": 0, "2": 1}
_NLI_LABELS = {name: index for index, name in enumerate(NLI_OPTIONS)} | {
    str(index): index for index in range(len(NLI_OPTIONS))
}
_NLI_NO_GOLD_LABELS = frozenset({"-", "-1"})
_NLI_COLUMN_SETS = (("premise", "hypothesis", "label"), ("sentence1", "sentence2", "gold_label"))
_NLI_ID_COLUMNS = ("pairID", "promptID")
_MMLU_COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")
_MMLU_INDEX_ANSWERS = {str(index): index for index in range(4)}
_MMLU_LETTER_ANSWERS = {letter: index for index, letter in enumerate("ABCD")}
_SST2_LABELS = {"0": 0, "1": 1}
_SST2_TSV_COLUMNS = ("sentence", "label")
_STORY_CLOZE_SENTENCES = tuple(f"InputSentence{number}" for number in range(1, 5))
_STORY_CLOZE_ENDINGS = ("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2")
_STORY_CLOZE_COLUMNS = (
    "InputStoryid",
    *_STORY_CLOZE_SENTENCES,
    *_STORY_CLOZE_ENDINGS,
    "AnswerRightEnding",
)

_COPA_WHAT = "a COPA XML file (<copa-corpus> of <item> elements)"
_NLI_TSV_WHAT = "an NLI TSV file (premise, hypothesis, label or sentence1, sentence2, gold_label)"
_NLI_JSONL_WHAT = "an NLI JSON-lines file (one object per line)"
_MMLU_WHAT = "an MMLU CSV file (question, 4 choices, answer)"
_SST2_WHAT = "an SST-2 file ('<label> <sentence>' lines, or a GLUE TSV with sentence, label)"
_WINOGRANDE_WHAT = "a Winogrande JSON-lines file (qID, sentence, option1, option2, answer)"
_STORY_CLOZE_WHAT = "a Story Cloze CSV file (InputStoryid, InputSentence1-4, two endings, answer)"


@dataclass(frozen=True)
class _Record:
    """One row, line or item of a data file, as field name to text."""

    path: Path
    where: str
    number: int
    fields: dict[str, str]

    def error(self, message: str) -> DataError:
        return DataError(self.path, message, where=self.where)

    def value(self, key: str) -> str:
        """The stripped, non-empty value of ``key``."""
        if key not in self.fields:
            raise self.error(f"has no field {key!r} (found {sorted(self.fields)})")
        return require_value(self.path, self.where, self.fields, key)

    def label(self, key: str, accepted: Mapping[str, int]) -> int:
        """The option index that the value of ``key`` stands for."""
        value = self.value(key)
        if value not in accepted:
            raise self.error(f"field {key!r} is {value!r}; expected one of {list(accepted)}")
        return accepted[value]


# --- readers: each yields the records of one file format ----------------------------------


def _csv_records(
    path: Path, what: str, required: Sequence[str], delimiter: str = ","
) -> Iterator[_Record]:
    for number, row in read_csv_rows(path, what, required=required, delimiter=delimiter):
        yield _Record(path, f"row {number}", number, row)


def _first_line(path: Path, what: str) -> str:
    return read_text(path, what).split("\n", 1)[0].rstrip("\r")


def _lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)``; blank lines are allowed only at the end of the file."""
    lines = [line.rstrip("\r") for line in read_text(path, what).split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(path, "blank line; remove it", where=f"line {number}")
        yield number, line


def _json_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)


def _jsonl_records(path: Path, what: str) -> Iterator[_Record]:
    for number, line in _lines(path, what):
        where = f"line {number}"
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"is not valid JSON ({error.msg}); expected {what}"
            raise DataError(path, message, where=where) from None
        if not isinstance(parsed, dict):
            raise DataError(path, f"is a JSON {type(parsed).__name__}, not an object", where=where)
        fields = {key: _json_text(value) for key, value in parsed.items()}
        yield _Record(path, where, number, fields)


def _copa_records(path: Path) -> Iterator[_Record]:
    try:
        root = ElementTree.fromstring(read_text(path, _COPA_WHAT))
    except ElementTree.ParseError as error:
        raise DataError(
            path,
            f"is not well-formed XML ({error}); expected {_COPA_WHAT}",
            where=f"line {error.position[0]}",
        ) from None
    if root.tag != "copa-corpus":
        raise DataError(path, f"root element is <{root.tag}>; expected {_COPA_WHAT}")
    for number, element in enumerate(root.findall("item"), start=1):
        fields = dict(element.attrib)
        fields |= {child.tag: "".join(child.itertext()) for child in element}
        where = f"item id={fields['id']}" if fields.get("id", "").strip() else f"item {number}"
        yield _Record(path, where, number, fields)


def _mmlu_records(path: Path) -> Iterator[tuple[_Record, Mapping[str, int]]]:
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
        yield _Record(path, where, number, dict(zip(_MMLU_COLUMNS, fields, strict=True))), answers


def _finish(path: Path, what: str, items: list[MultipleChoiceItem]) -> list[MultipleChoiceItem]:
    """``items``, after checking that there is at least one and that ids are unique."""
    if not items:
        raise DataError(path, f"contains no items; expected {what}")
    check_unique_ids(path, (item.id for item in items))
    return items


# --- COPA ---------------------------------------------------------------------------------


def load_copa(path: str | Path) -> list[MultipleChoiceItem]:
    """Load a COPA XML file (``copa-test.xml``, ``copa-dev.xml``).

    Each ``<item id="7" asks-for="cause|effect" most-plausible-alternative="1|2">`` with
    children ``<p>`` (premise), ``<a1>`` and ``<a2>`` becomes an item with
    ``id="copa-7"``, ``context`` the premise, ``question`` the ``asks-for`` value,
    ``options=(a1, a2)`` and ``label`` the most plausible alternative minus one.
    """
    path = require_file(path, _COPA_WHAT)
    return _finish(path, _COPA_WHAT, [_copa_item(record) for record in _copa_records(path)])


def _copa_item(record: _Record) -> MultipleChoiceItem:
    asks_for = record.value("asks-for")
    if asks_for not in ("cause", "effect"):
        raise record.error(f"asks-for is {asks_for!r}; expected 'cause' or 'effect'")
    return MultipleChoiceItem(
        id=f"copa-{record.value('id')}",
        dataset="copa",
        context=record.value("p"),
        options=(record.value("a1"), record.value("a2")),
        label=record.label("most-plausible-alternative", _FIRST_OR_SECOND),
        question=asks_for,
    )


# --- NLI ----------------------------------------------------------------------------------


def load_nli(path: str | Path, *, language: str | None = None) -> list[MultipleChoiceItem]:
    """Load an NLI file: SNLI as shipped, or SNLI/MultiNLI/XNLI in their own formats.

    Accepted formats:

    * TSV with a header and CSV-style quoting, columns ``premise``, ``hypothesis``,
      ``label`` (``0``/``1``/``2``), or ``sentence1``, ``sentence2``, ``gold_label``
      (``entailment``/``neutral``/``contradiction``); other columns are ignored.
    * JSON lines (``.jsonl`` or ``.json``) with the same two sets of keys.

    Each pair becomes an item with ``context`` the premise, ``question`` the hypothesis,
    ``options=("entailment", "neutral", "contradiction")`` and ``label`` the index of the
    gold label (given as a name or as the index). ``id`` is the file's ``pairID`` (else
    ``promptID``), with ``-{language}`` appended where the file has a ``language`` field;
    without these it is ``nli-{file stem}-{row or line}``. ``language`` keeps only the
    pairs of that language (XNLI). Pairs without annotator consensus (gold label ``"-"``,
    or ``-1`` in Hugging Face exports) are dropped with one warning.
    """
    path = require_file(path, "an NLI TSV or JSON-lines file")
    if path.suffix in (".jsonl", ".json"):
        what, records = _NLI_JSONL_WHAT, _jsonl_records(path, _NLI_JSONL_WHAT)
    else:
        what, records = _NLI_TSV_WHAT, _nli_tsv_records(path, language)
    return _finish(path, what, _nli_items(path, records, language))


def _nli_columns(path: Path, where: str, names: Collection[str]) -> tuple[str, str, str]:
    """The (premise, hypothesis, label) column names that ``names`` holds."""
    for columns in _NLI_COLUMN_SETS:
        if all(column in names for column in columns):
            return columns
    expected = " or ".join(str(list(columns)) for columns in _NLI_COLUMN_SETS)
    raise DataError(path, f"has neither set of NLI columns {expected}", where=where)


def _nli_tsv_records(path: Path, language: str | None) -> Iterator[_Record]:
    header = _first_line(path, _NLI_TSV_WHAT).split("\t")
    required = _nli_columns(path, "header", [name.strip() for name in header])
    extra = ("language",) if language is not None else ()
    return _csv_records(path, _NLI_TSV_WHAT, (*required, *extra), delimiter="\t")


def _nli_items(
    path: Path, records: Iterable[_Record], language: str | None
) -> list[MultipleChoiceItem]:
    items: list[MultipleChoiceItem] = []
    languages_seen: set[str] = set()
    dropped = 0
    for record in records:
        if language is not None:
            record_language = record.value("language")
            languages_seen.add(record_language)
            if record_language != language:
                continue
        premise, hypothesis, label = _nli_columns(path, record.where, record.fields)
        if record.value(label) in _NLI_NO_GOLD_LABELS:
            dropped += 1
            continue
        items.append(_nli_item(record, premise, hypothesis, label))
    if language is not None and languages_seen and language not in languages_seen:
        raise DataError(
            path, f"has no pairs in language {language!r}; it has {sorted(languages_seen)}"
        )
    if dropped:
        logger.warning(
            "%s: dropped %d pair(s) without a gold label ('-': no annotator consensus)",
            path,
            dropped,
        )
    return items


def _nli_item(record: _Record, premise: str, hypothesis: str, label: str) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=_nli_id(record),
        dataset="nli",
        context=record.value(premise),
        options=NLI_OPTIONS,
        label=record.label(label, _NLI_LABELS),
        question=record.value(hypothesis),
    )


def _nli_id(record: _Record) -> str:
    for column in _NLI_ID_COLUMNS:
        if column in record.fields:
            pair_id = record.value(column)
            if "language" in record.fields:
                return f"{pair_id}-{record.value('language')}"
            return pair_id
    return f"nli-{record.path.stem}-{record.number}"


# --- MMLU ---------------------------------------------------------------------------------


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
    return _finish(folder, f"MMLU {split} files", items)


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


def _mmlu_item(record: _Record, answers: Mapping[str, int], subject: str) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=f"mmlu-{subject}-{record.number}",
        dataset="mmlu",
        context=record.value("question"),
        options=tuple(record.value(column) for column in _MMLU_COLUMNS[1:5]),
        label=record.label("answer", answers),
        extra={"subject": subject},
    )


# --- SST-2 --------------------------------------------------------------------------------


def load_sst2(path: str | Path) -> list[MultipleChoiceItem]:
    """Load an SST-2 file: ``stsa.binary.*`` lines or a GLUE SST-2 TSV.

    In ``stsa.binary.*`` each line is ``<label> <sentence>``: the label ``0`` (negative)
    or ``1`` (positive), one space, the sentence. A GLUE TSV has the header
    ``sentence<TAB>label``. Each example becomes an item with
    ``id="sst2-{file name}-{line or row}"``, ``context`` the sentence,
    ``options=("negative", "positive")`` and ``label`` 0 or 1.
    """
    path = require_file(path, _SST2_WHAT)
    if "sentence" in _first_line(path, _SST2_WHAT).split("\t"):
        records = _csv_records(path, _SST2_WHAT, _SST2_TSV_COLUMNS, delimiter="\t")
    else:
        records = (
            _sst2_line_record(path, number, line) for number, line in _lines(path, _SST2_WHAT)
        )
    return _finish(path, _SST2_WHAT, [_sst2_item(record) for record in records])


def _sst2_line_record(path: Path, number: int, line: str) -> _Record:
    where = f"line {number}"
    if len(line) < 3 or line[1] != " ":
        raise DataError(
            path, f"is {line[:40]!r}; expected '<label> <sentence>' with label 0 or 1", where=where
        )
    return _Record(path, where, number, {"label": line[0], "sentence": line[2:]})


def _sst2_item(record: _Record) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=f"sst2-{record.path.name}-{record.number}",
        dataset="sst2",
        context=record.value("sentence"),
        options=SST2_OPTIONS,
        label=record.label("label", _SST2_LABELS),
    )


# --- Winogrande ---------------------------------------------------------------------------


def load_winogrande(path: str | Path) -> list[MultipleChoiceItem]:
    """Load a Winogrande JSON-lines file (``dev.jsonl``).

    Each line is an object with ``qID``, ``sentence`` (with exactly one ``_`` blank),
    ``option1``, ``option2`` and ``answer`` (``"1"`` or ``"2"``); it becomes an item with
    ``id`` the ``qID``, ``context`` the sentence, ``options=(option1, option2)`` and
    ``label`` the answer minus one.
    """
    path = require_file(path, _WINOGRANDE_WHAT)
    records = _jsonl_records(path, _WINOGRANDE_WHAT)
    return _finish(path, _WINOGRANDE_WHAT, [_winogrande_item(record) for record in records])


def _winogrande_item(record: _Record) -> MultipleChoiceItem:
    sentence = record.value("sentence")
    blanks = sentence.count("_")
    if blanks != 1:
        raise record.error(f"sentence has {blanks} '_' blanks; expected exactly one")
    return MultipleChoiceItem(
        id=record.value("qID"),
        dataset="winogrande",
        context=sentence,
        options=(record.value("option1"), record.value("option2")),
        label=record.label("answer", _FIRST_OR_SECOND),
    )


# --- Story Cloze --------------------------------------------------------------------------


def load_story_cloze(path: str | Path) -> list[MultipleChoiceItem]:
    """Load a Story Cloze Test CSV file (ROCStories, as distributed to registered users).

    Columns ``InputStoryid``, ``InputSentence1`` to ``InputSentence4``,
    ``RandomFifthSentenceQuiz1``, ``RandomFifthSentenceQuiz2`` and ``AnswerRightEnding``
    (``1`` or ``2``). Each story becomes an item with ``id`` the story id, ``context`` the
    four sentences joined by single spaces, ``options`` the two endings and ``label`` the
    right ending minus one.
    """
    path = require_file(path, _STORY_CLOZE_WHAT)
    records = _csv_records(path, _STORY_CLOZE_WHAT, _STORY_CLOZE_COLUMNS)
    return _finish(path, _STORY_CLOZE_WHAT, [_story_cloze_item(record) for record in records])


def _story_cloze_item(record: _Record) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=record.value("InputStoryid"),
        dataset="story_cloze",
        context=" ".join(record.value(column) for column in _STORY_CLOZE_SENTENCES),
        options=tuple(record.value(column) for column in _STORY_CLOZE_ENDINGS),
        label=record.label("AnswerRightEnding", _FIRST_OR_SECOND),
    )


# --- by name ------------------------------------------------------------------------------

MC_DATASETS: dict[str, Callable[..., list[MultipleChoiceItem]]] = {
    "copa": load_copa,
    "nli": load_nli,
    "mmlu": load_mmlu,
    "sst2": load_sst2,
    "winogrande": load_winogrande,
    "story_cloze": load_story_cloze,
}


def load_multiple_choice(name: str, path: str | Path, **kwargs: object) -> list[MultipleChoiceItem]:
    """Load the dataset ``name`` (a key of :data:`MC_DATASETS`) from ``path``.

    ``kwargs`` go to the loader, e.g. ``split=`` and ``subjects=`` for ``"mmlu"``.
    """
    if name not in MC_DATASETS:
        raise ValueError(f"unknown multiple-choice dataset {name!r}; known: {list(MC_DATASETS)}")
    return MC_DATASETS[name](path, **kwargs)
