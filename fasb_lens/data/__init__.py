"""Datasets and prompts: loaders into small dataclasses, templates as named constants.

TruthfulQA (CSV, ``mc_task.json`` or the hub), the built-in mini set, the six
multiple-choice datasets of the paper, and the prompt builders for probing, tuning and
evaluation.
"""

from fasb_lens.data._files import DataError, DataFileNotFoundError, read_lines
from fasb_lens.data.prompts import (
    PROBE_TEMPLATE,
    PROMPTS,
    TUNING_TEMPLATE,
    ProbeAnswers,
    PromptFormat,
    context_prompts,
    labelled_answers,
    load_prompt_format,
    probing_prompts,
    truthfulqa_prompt_format,
    tuning_prompts,
)
from fasb_lens.data.schema import LabelledPrompt, MultipleChoiceItem, TruthfulQAQuestion
from fasb_lens.data.truthfulqa import (
    bundled_truthfulqa,
    load_mc_task,
    load_mini_truthfulqa,
    load_questions,
    load_truthfulqa,
    load_truthfulqa_hub,
    truthfulqa_folder,
)

__all__ = [
    "PROBE_TEMPLATE",
    "PROMPTS",
    "TUNING_TEMPLATE",
    "DataError",
    "DataFileNotFoundError",
    "LabelledPrompt",
    "MultipleChoiceItem",
    "ProbeAnswers",
    "PromptFormat",
    "TruthfulQAQuestion",
    "context_prompts",
    "labelled_answers",
    "load_mc_task",
    "load_mini_truthfulqa",
    "load_prompt_format",
    "bundled_truthfulqa",
    "load_questions",
    "load_truthfulqa",
    "load_truthfulqa_hub",
    "probing_prompts",
    "truthfulqa_folder",
    "truthfulqa_prompt_format",
    "read_lines",
    "tuning_prompts",
]
