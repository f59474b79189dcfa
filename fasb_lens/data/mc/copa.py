"""COPA (Choice Of Plausible Alternatives): pick the more plausible cause or effect.

Each item is a premise, the relation it asks for (``cause`` or ``effect``) and two
alternatives. The prompt joins the premise and an alternative into one sentence with
"because" (cause) or "so" (effect), so the model scores a natural continuation.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

from fasb_lens.data._files import DataError, read_text, require_file
from fasb_lens.data.mc._common import FIRST_OR_SECOND, OptionPrompt, Record, finish, same_prefix
from fasb_lens.data.mc.registry import MultipleChoiceDataset, register
from fasb_lens.data.schema import MultipleChoiceItem

COPA_CONNECTORS = {"cause": " because", "effect": " so"}

_COPA_WHAT = "a COPA XML file (<copa-corpus> of <item> elements)"


def load_copa(path: str | Path) -> list[MultipleChoiceItem]:
    """Load a COPA XML file (``copa-test.xml``, ``copa-dev.xml``).

    Each ``<item id="7" asks-for="cause|effect" most-plausible-alternative="1|2">`` with
    children ``<p>`` (premise), ``<a1>`` and ``<a2>`` becomes an item with
    ``id="copa-7"``, ``context`` the premise, ``question`` the ``asks-for`` value,
    ``options=(a1, a2)`` and ``label`` the most plausible alternative minus one.
    """
    path = require_file(path, _COPA_WHAT)
    return finish(path, _COPA_WHAT, [_copa_item(record) for record in _copa_records(path)])


def _copa_records(path: Path) -> Iterator[Record]:
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
        yield Record(path, where, number, fields)


def _copa_item(record: Record) -> MultipleChoiceItem:
    asks_for = record.value("asks-for")
    if asks_for not in ("cause", "effect"):
        raise record.error(f"asks-for is {asks_for!r}; expected 'cause' or 'effect'")
    return MultipleChoiceItem(
        id=f"copa-{record.value('id')}",
        dataset="copa",
        context=record.value("p"),
        options=(record.value("a1"), record.value("a2")),
        label=record.label("most-plausible-alternative", FIRST_OR_SECOND),
        question=asks_for,
    )


def _lower_first(text: str) -> str:
    """``text`` with its first letter lower-cased, except the pronoun "I" (and "I'm", ...)."""
    first_word = text.split(" ", 1)[0]
    if first_word == "I" or first_word.startswith("I'"):
        return text
    return text[:1].lower() + text[1:]


def _option_prompts(item: MultipleChoiceItem) -> list[OptionPrompt]:
    if item.question not in COPA_CONNECTORS:
        raise ValueError(
            f"COPA item {item.id!r} asks for {item.question!r}; expected 'cause' or 'effect'"
        )
    premise = item.context.strip().removesuffix(".")
    prefix = premise + COPA_CONNECTORS[item.question]
    return same_prefix(prefix, [_lower_first(option) for option in item.options])


register(
    MultipleChoiceDataset(
        name="copa",
        load=load_copa,
        option_prompts=_option_prompts,
        description=(
            'COPA: "{premise without its final period} because" (cause) or "... so" (effect), '
            'scoring " {alternative with its first letter lower-cased}" ("I" stays "I")'
        ),
        default_path="copa/copa-test.xml",
    )
)
