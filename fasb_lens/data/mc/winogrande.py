"""Winogrande: which of two names fills the blank ``_`` of a sentence?

Scored by partial scoring: each option fills the blank in the prefix, and the same rest
of the sentence after the blank is scored, so the options are compared on equal text.
"""

from __future__ import annotations

from pathlib import Path

from fasb_lens.data._files import require_file
from fasb_lens.data.mc._common import (
    FIRST_OR_SECOND,
    OptionPrompt,
    Record,
    finish,
    jsonl_records,
)
from fasb_lens.data.mc.registry import MultipleChoiceDataset, register
from fasb_lens.data.schema import MultipleChoiceItem

WINOGRANDE_BLANK = "_"

_WINOGRANDE_WHAT = "a Winogrande JSON-lines file (qID, sentence, option1, option2, answer)"


def load_winogrande(path: str | Path) -> list[MultipleChoiceItem]:
    """Load a Winogrande JSON-lines file (``dev.jsonl``).

    Each line is an object with ``qID``, ``sentence`` (with exactly one ``_`` blank),
    ``option1``, ``option2`` and ``answer`` (``"1"`` or ``"2"``); it becomes an item with
    ``id`` the ``qID``, ``context`` the sentence, ``options=(option1, option2)`` and
    ``label`` the answer minus one.
    """
    path = require_file(path, _WINOGRANDE_WHAT)
    records = jsonl_records(path, _WINOGRANDE_WHAT)
    return finish(path, _WINOGRANDE_WHAT, [_winogrande_item(record) for record in records])


def _winogrande_item(record: Record) -> MultipleChoiceItem:
    sentence = record.value("sentence")
    blanks = sentence.count("_")
    if blanks != 1:
        raise record.error(f"sentence has {blanks} '_' blanks; expected exactly one")
    return MultipleChoiceItem(
        id=record.value("qID"),
        dataset="winogrande",
        context=sentence,
        options=(record.value("option1"), record.value("option2")),
        label=record.label("answer", FIRST_OR_SECOND),
    )


def _option_prompts(item: MultipleChoiceItem) -> list[OptionPrompt]:
    if item.context.count(WINOGRANDE_BLANK) != 1:
        raise ValueError(f"Winogrande item {item.id!r} needs exactly one '_' blank")
    before, after = item.context.split(WINOGRANDE_BLANK)
    rest = after.lstrip()
    if not rest:
        raise ValueError(f"Winogrande item {item.id!r} has nothing after its blank to score")
    return [(before + option, " " + rest) for option in item.options]


register(
    MultipleChoiceDataset(
        name="winogrande",
        load=load_winogrande,
        option_prompts=_option_prompts,
        description=(
            'Winogrande (partial scoring): "{sentence up to the blank}{option}", scoring the '
            'same " {rest of the sentence}" after each option'
        ),
        default_path="winogrande/dev.jsonl",
    )
)
