"""The registry of multiple-choice datasets: one :class:`MultipleChoiceDataset` per name.

A dataset is known by what it takes to evaluate it: a loader from its files to
:class:`MultipleChoiceItem` objects, and a prompt format that turns each item into one
``(prefix, continuation)`` pair per option, to be scored cloze-style (the model reads the
prefix; the log-likelihood of the continuation is the option's score). Each dataset
module registers itself with :func:`register`; everything else looks it up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fasb_lens.data.mc._common import OptionPrompt
from fasb_lens.data.schema import LabelledPrompt, MultipleChoiceItem


@dataclass(frozen=True)
class MultipleChoiceDataset:
    """How to load one multiple-choice dataset and turn its items into option prompts.

    Attributes:
        name: the registry key, also each item's ``dataset``.
        load: ``load(path, **kwargs)`` reads the dataset's file or folder into items.
        option_prompts: ``(prefix, continuation)`` for each option of an item, in option
            order; the continuation starts with a space and is the only part scored.
        description: the prompt format in one line, recorded with activations.
        default_path: where the dataset lies inside the shared data folder; ``None`` if it
            is not shipped there.
        aliases: other names that :func:`dataset` accepts.
    """

    name: str
    load: Callable[..., list[MultipleChoiceItem]]
    option_prompts: Callable[[MultipleChoiceItem], list[OptionPrompt]]
    description: str
    default_path: str | None = None
    aliases: tuple[str, ...] = ()


DATASETS: dict[str, MultipleChoiceDataset] = {}
"""Name to dataset, in registration order."""


def _lookup(name: str) -> MultipleChoiceDataset | None:
    if name in DATASETS:
        return DATASETS[name]
    return next((entry for entry in DATASETS.values() if name in entry.aliases), None)


def register(entry: MultipleChoiceDataset) -> MultipleChoiceDataset:
    """Add ``entry`` to :data:`DATASETS`; its name and aliases must not be taken yet."""
    for name in (entry.name, *entry.aliases):
        taken = _lookup(name)
        if taken is not None:
            raise ValueError(
                f"multiple-choice dataset name {name!r} is already taken by {taken.name!r}"
            )
    DATASETS[entry.name] = entry
    return entry


def dataset(name: str) -> MultipleChoiceDataset:
    """The dataset registered as ``name`` or with ``name`` among its aliases."""
    entry = _lookup(name)
    if entry is None:
        raise ValueError(f"unknown multiple-choice dataset {name!r}; known: {list(DATASETS)}")
    return entry


def load_multiple_choice(name: str, path: str | Path, **kwargs: object) -> list[MultipleChoiceItem]:
    """Load the dataset ``name`` (a key of :data:`DATASETS` or an alias) from ``path``.

    ``kwargs`` go to the loader, e.g. ``split=`` and ``subjects=`` for ``"mmlu"``.
    """
    return dataset(name).load(path, **kwargs)


def option_prompts(item: MultipleChoiceItem) -> list[OptionPrompt]:
    """``(prefix, continuation)`` for each option of ``item``, in option order.

    The continuation starts with a space and is the only part scored; see
    :func:`format_description` for each dataset's format.
    """
    entry = _lookup(item.dataset)
    if entry is None:
        raise ValueError(
            f"item {item.id!r} is from unknown dataset {item.dataset!r}; known: {list(DATASETS)}"
        )
    return entry.option_prompts(item)


def labelled_option_prompts(items: Sequence[MultipleChoiceItem]) -> list[LabelledPrompt]:
    """One probing prompt per option: ``prefix + continuation``, 1 if correct, grouped by item."""
    return [
        LabelledPrompt(
            text=prefix + continuation,
            label=int(index == item.label),
            group=item.id,
            answer=item.options[index],
        )
        for item in items
        for index, (prefix, continuation) in enumerate(option_prompts(item))
    ]


def format_description(name: str) -> str:
    """The one-line description of dataset ``name``'s prompt format."""
    return dataset(name).description
