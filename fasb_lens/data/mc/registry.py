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
from fasb_lens.registry import Registry


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


DATASETS: Registry[MultipleChoiceDataset] = Registry("multiple-choice dataset")
"""Every registered dataset, in registration order (the tables' order)."""

register = DATASETS.register
dataset = DATASETS.get


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
    if item.dataset not in DATASETS:
        raise ValueError(
            f"item {item.id!r} is from unknown dataset {item.dataset!r}; "
            f"known: {DATASETS.describe()}"
        )
    return DATASETS.get(item.dataset).option_prompts(item)


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
