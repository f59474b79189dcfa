"""The small dataclasses every loader returns.

* :class:`TruthfulQAQuestion`: one question with its true and false reference answers
  (TruthfulQA's schema; the built-in mini set uses it too).
* :class:`MultipleChoiceItem`: one item of a multiple-choice dataset (COPA, NLI, MMLU,
  SST-2, Winogrande, Story Cloze) as context, options and the correct option's index.
* :class:`LabelledPrompt`: one prompt for probing, with its label and question group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TruthfulQAQuestion:
    """A question with reference answers.

    ``id`` is stable across runs and files (``tqa-0000`` is the first row of TruthfulQA's
    CSV). ``mc1_targets``/``mc2_targets`` hold ``(answer, label)`` pairs from
    ``mc_task.json`` when it was loaded, else they are empty; ``mc_order`` is then the
    question's position in that file, the order the FASB and ITI authors split folds in.
    """

    id: str
    question: str
    best_answer: str
    correct_answers: tuple[str, ...]
    incorrect_answers: tuple[str, ...]
    category: str = ""
    type: str = ""
    source: str = ""
    mc1_targets: tuple[tuple[str, int], ...] = ()
    mc2_targets: tuple[tuple[str, int], ...] = ()
    mc_order: int | None = None

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError(f"question {self.id!r} has no text")
        if not self.correct_answers:
            raise ValueError(f"question {self.id!r} has no correct answer")
        if not self.incorrect_answers:
            raise ValueError(f"question {self.id!r} has no incorrect answer")


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One multiple-choice item: pick ``options[label]`` given ``context``.

    ``question`` holds the part of the item that is asked about where a dataset has one
    (COPA: ``"cause"`` or ``"effect"``; NLI: the hypothesis); ``extra`` holds other
    fields worth keeping (MMLU's subject).
    """

    id: str
    dataset: str
    context: str
    options: tuple[str, ...]
    label: int
    question: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise ValueError(f"item {self.id!r} needs at least two options")
        if not 0 <= self.label < len(self.options):
            raise ValueError(
                f"item {self.id!r}: label {self.label} is not an index into "
                f"{len(self.options)} options"
            )

    @property
    def answer(self) -> str:
        return self.options[self.label]


@dataclass(frozen=True)
class LabelledPrompt:
    """A prompt whose last-token activations a probe learns from.

    ``label`` is 1 for a true answer and 0 for a false one; ``group`` is the id of the
    question it came from, so splits never put one question on both sides.
    """

    text: str
    label: int
    group: str
    answer: str = ""

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
