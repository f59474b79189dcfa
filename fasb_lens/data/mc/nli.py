"""NLI (SNLI, MultiNLI, XNLI): does the premise entail, contradict or not decide the hypothesis?

Each item is a premise and a hypothesis with the three options of :data:`NLI_OPTIONS`.
The prompt asks "True, False or Neither?" and scores the answer word that stands for
each option (:data:`NLI_ANSWERS`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from fasb_lens.data._files import DataError, require_file
from fasb_lens.data.mc._common import (
    OptionPrompt,
    Record,
    csv_records,
    finish,
    first_line,
    jsonl_records,
    same_prefix,
)
from fasb_lens.data.mc.registry import MultipleChoiceDataset, register
from fasb_lens.data.schema import MultipleChoiceItem

logger = logging.getLogger(__name__)

NLI_OPTIONS = ("entailment", "neutral", "contradiction")
NLI_TEMPLATE = "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:"
NLI_ANSWERS = {"entailment": "True", "neutral": "Neither", "contradiction": "False"}

_NLI_LABELS = {name: index for index, name in enumerate(NLI_OPTIONS)} | {
    str(index): index for index in range(len(NLI_OPTIONS))
}
_NLI_NO_GOLD_LABELS = frozenset({"-", "-1"})
_NLI_COLUMN_SETS = (("premise", "hypothesis", "label"), ("sentence1", "sentence2", "gold_label"))
_NLI_ID_COLUMNS = ("pairID", "promptID")

_NLI_TSV_WHAT = "an NLI TSV file (premise, hypothesis, label or sentence1, sentence2, gold_label)"
_NLI_JSONL_WHAT = "an NLI JSON-lines file (one object per line)"


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
        what, records = _NLI_JSONL_WHAT, jsonl_records(path, _NLI_JSONL_WHAT)
    else:
        what, records = _NLI_TSV_WHAT, _nli_tsv_records(path, language)
    return finish(path, what, _nli_items(path, records, language))


def _nli_columns(path: Path, where: str, names: Collection[str]) -> tuple[str, str, str]:
    """The (premise, hypothesis, label) column names that ``names`` holds."""
    for columns in _NLI_COLUMN_SETS:
        if all(column in names for column in columns):
            return columns
    expected = " or ".join(str(list(columns)) for columns in _NLI_COLUMN_SETS)
    raise DataError(path, f"has neither set of NLI columns {expected}", where=where)


def _nli_tsv_records(path: Path, language: str | None) -> Iterator[Record]:
    header = first_line(path, _NLI_TSV_WHAT).split("\t")
    required = _nli_columns(path, "header", [name.strip() for name in header])
    extra = ("language",) if language is not None else ()
    return csv_records(path, _NLI_TSV_WHAT, (*required, *extra), delimiter="\t")


def _nli_items(
    path: Path, records: Iterable[Record], language: str | None
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


def _nli_item(record: Record, premise: str, hypothesis: str, label: str) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        id=_nli_id(record),
        dataset="nli",
        context=record.value(premise),
        options=NLI_OPTIONS,
        label=record.label(label, _NLI_LABELS),
        question=record.value(hypothesis),
    )


def _nli_id(record: Record) -> str:
    for column in _NLI_ID_COLUMNS:
        if column in record.fields:
            pair_id = record.value(column)
            if "language" in record.fields:
                return f"{pair_id}-{record.value('language')}"
            return pair_id
    return f"nli-{record.path.stem}-{record.number}"


def _option_prompts(item: MultipleChoiceItem) -> list[OptionPrompt]:
    unknown = [option for option in item.options if option not in NLI_ANSWERS]
    if unknown:
        raise ValueError(f"NLI item {item.id!r} has options {unknown}; known: {list(NLI_ANSWERS)}")
    prefix = NLI_TEMPLATE.format(premise=item.context, hypothesis=item.question)
    return same_prefix(prefix, [NLI_ANSWERS[option] for option in item.options])


register(
    MultipleChoiceDataset(
        name="nli",
        load=load_nli,
        option_prompts=_option_prompts,
        description=(
            'NLI: "{premise}\\nQuestion: {hypothesis} True, False or Neither?\\nAnswer:", '
            'scoring " True" (entailment), " Neither" (neutral), " False" (contradiction)'
        ),
        default_path="snli/test.tsv",
    )
)
