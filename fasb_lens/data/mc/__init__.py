"""The multiple-choice datasets of the FASB evaluation, one module each, found by name.

COPA, NLI (SNLI, MultiNLI, XNLI), MMLU, SST-2, Winogrande and Story Cloze are each read
from their files into one schema, a list of :class:`MultipleChoiceItem`: the ``context``
to read, the ``options`` to choose from and the index ``label`` of the correct option.
Bad input raises a :class:`DataError` naming the file, the row, line or item, and what
was expected; nothing is skipped silently. Each item is scored cloze-style through its
dataset's prompt format: :func:`option_prompts` gives one ``(prefix, continuation)`` per
option, and the model's log-likelihood of the continuation is that option's score.

To add a dataset, write one module here (see ``sst2.py`` for a short one) with

* a loader ``load_NAME(path, **kwargs) -> list[MultipleChoiceItem]`` that reads records
  with the readers of ``_common.py`` and ends with ``finish(...)``;
* its prompt format, ``item -> [(prefix, " continuation"), ...]`` in option order;
* one ``register(MultipleChoiceDataset(name=..., load=..., option_prompts=...,
  description=..., default_path=...))`` call;

import it below, and add one test that loads a small file written by the test and checks
the option prompts of one item. :func:`load_multiple_choice` and the evaluation then
know it by name.
"""

# isort: off
# The dataset modules register themselves on import, in this (the table's) order.
from fasb_lens.data.mc.registry import (
    DATASETS,
    MultipleChoiceDataset,
    dataset,
    format_description,
    labelled_option_prompts,
    load_multiple_choice,
    option_prompts,
    register,
)
from fasb_lens.data.mc._common import OptionPrompt
from fasb_lens.data.mc.copa import COPA_CONNECTORS, load_copa
from fasb_lens.data.mc.nli import NLI_ANSWERS, NLI_OPTIONS, NLI_TEMPLATE, load_nli
from fasb_lens.data.mc.mmlu import MMLU_TEMPLATE, load_mmlu
from fasb_lens.data.mc.sst2 import SST2_OPTIONS, SST2_TEMPLATE, load_sst2
from fasb_lens.data.mc.winogrande import WINOGRANDE_BLANK, load_winogrande
from fasb_lens.data.mc.story_cloze import load_story_cloze

# isort: on

__all__ = [
    "COPA_CONNECTORS",
    "DATASETS",
    "MMLU_TEMPLATE",
    "NLI_ANSWERS",
    "NLI_OPTIONS",
    "NLI_TEMPLATE",
    "SST2_OPTIONS",
    "SST2_TEMPLATE",
    "WINOGRANDE_BLANK",
    "MultipleChoiceDataset",
    "OptionPrompt",
    "dataset",
    "format_description",
    "labelled_option_prompts",
    "load_copa",
    "load_mmlu",
    "load_multiple_choice",
    "load_nli",
    "load_sst2",
    "load_story_cloze",
    "load_winogrande",
    "option_prompts",
    "register",
]
