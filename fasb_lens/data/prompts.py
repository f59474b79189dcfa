"""Prompt templates and the prompt sets built from TruthfulQA-style questions.

Three kinds of prompt, as the FASB and ITI evaluations use them:

* **probing** prompts ``"Q: {question} A: {answer}"``, one per reference answer, labelled
  1 (true) or 0 (false) and grouped by question: probes learn from their last token. As
  in the authors' code, the answers are ``mc_task.json``'s MC2 answers (which end in
  ``"."``, the token multiple-choice checks land on) when the questions carry them, else
  the CSV's reference answers;
* **tuning** prompts ``"Q: {question} A: {answer} Q: {other question}"`` with a randomly
  drawn other question: the spread of their projections sets each direction's scale;
* **evaluation** prompts: an instruction, a blank line, a six-shot QA primer, then
  ``"\\n\\nQ: {question}"``; the model continues with ``"\\nA: ..."``. Multiple-choice
  scoring appends ``"\\nA:"`` and scores ``" {answer}"``.

Which instruction and primer a TruthfulQA evaluation uses is decided in one place,
:func:`truthfulqa_prompt_format`: the authors' (``instruction_prompt.txt`` and
``qa_primer.txt``, which the bundled TruthfulQA folder holds, as the authors' released
run uses them) where the questions' folder holds both files, else fasb_lens' own
(``builtin``); ``--prompt`` chooses, and ``--primer``/``--instruction`` replace either
file.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from fasb_lens.data._files import DataError, read_text
from fasb_lens.data.schema import LabelledPrompt, TruthfulQAQuestion
from fasb_lens.data.truthfulqa import bundled_truthfulqa, truthfulqa_folder
from fasb_lens.options import option

PROBE_TEMPLATE = "Q: {question} A: {answer}"
TUNING_TEMPLATE = "Q: {question} A: {answer} Q: {other_question}"
QUESTION_SUFFIX = "\n\nQ: {question}"
ANSWER_PREFIX = "\nA:"

ProbeAnswers = Literal["auto", "mc_task", "csv"]
"""Which reference answers make probing prompts: ``mc_task.json``'s MC2 answers, the
CSV's, or (``"auto"``) the MC2 answers where a question has them."""


def labelled_answers(
    question: TruthfulQAQuestion, answers: ProbeAnswers = "auto"
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(true answers, false answers)`` of a question for probing."""
    if answers not in ("auto", "mc_task", "csv"):
        raise ValueError(f"answers must be 'auto', 'mc_task' or 'csv', got {answers!r}")
    if answers == "mc_task" or (answers == "auto" and question.mc2_targets):
        if not question.mc2_targets:
            raise ValueError(f"question {question.id} has no mc_task.json answers")
        true = tuple(text for text, label in question.mc2_targets if label == 1)
        false = tuple(text for text, label in question.mc2_targets if label == 0)
        return true, false
    return question.correct_answers, question.incorrect_answers


def probing_prompts(
    questions: Sequence[TruthfulQAQuestion], *, answers: ProbeAnswers = "auto"
) -> list[LabelledPrompt]:
    """One labelled prompt per reference answer: true answers (1) then false ones (0)."""
    prompts = []
    for question in questions:
        true, false = labelled_answers(question, answers)
        for label, texts in ((1, true), (0, false)):
            prompts.extend(
                LabelledPrompt(
                    text=PROBE_TEMPLATE.format(question=question.question, answer=answer),
                    label=label,
                    group=question.id,
                    answer=answer,
                )
                for answer in texts
            )
    return prompts


def tuning_prompts(
    questions: Sequence[TruthfulQAQuestion], *, seed: int = 0, answers: ProbeAnswers = "auto"
) -> list[LabelledPrompt]:
    """Probing prompts followed by a different, randomly drawn question (seeded)."""
    if len(questions) < 2:
        raise ValueError("tuning prompts need at least two questions to draw another from")
    rng = random.Random(seed)
    prompts = []
    for index, question in enumerate(questions):
        true, false = labelled_answers(question, answers)
        for label, texts in ((1, true), (0, false)):
            for answer in texts:
                other = rng.randrange(len(questions) - 1)
                other += other >= index
                prompts.append(
                    LabelledPrompt(
                        text=TUNING_TEMPLATE.format(
                            question=question.question,
                            answer=answer,
                            other_question=questions[other].question,
                        ),
                        label=label,
                        group=question.id,
                        answer=answer,
                    )
                )
    return prompts


def context_prompts(
    questions: Sequence[TruthfulQAQuestion],
    fmt: PromptFormat,
    *,
    answers: ProbeAnswers = "auto",
) -> list[LabelledPrompt]:
    """Probing prompts inside the evaluation prompt: instruction, primer, question, then
    ``"\nA: {answer}"`` - what the tracker reads during generation - labelled like
    :func:`probing_prompts`."""
    prompts = []
    for question in questions:
        true, false = labelled_answers(question, answers)
        for label, texts in ((1, true), (0, false)):
            for answer in texts:
                prefix, continuation = fmt.answer_prompt(question.question, answer)
                prompts.append(
                    LabelledPrompt(prefix + continuation, label, question.id, answer=answer)
                )
    return prompts


def _resource_text(name: str) -> str:
    return (resources.files("fasb_lens.data") / "resources" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class PromptFormat:
    """The evaluation prompt: optional instruction, QA primer, then the question."""

    primer: str
    instruction: str | None = None

    def __post_init__(self) -> None:
        if not self.primer.strip():
            raise ValueError("the QA primer is empty")

    @property
    def preamble(self) -> str:
        """Everything before the question: instruction, blank line, primer."""
        head = f"{self.instruction}\n\n" if self.instruction else ""
        return head + self.primer

    def generation_prompt(self, question: str) -> str:
        """The prompt a model continues with ``"\\nA: ..."``."""
        return self.preamble + QUESTION_SUFFIX.format(question=question)

    def answer_prompt(self, question: str, answer: str) -> tuple[str, str]:
        """``(prefix, continuation)`` for scoring ``answer``: only the continuation is scored."""
        return self.generation_prompt(question) + ANSWER_PREFIX, " " + answer


def load_prompt_format(
    primer: str | Path | None = None,
    instruction: str | Path | None = None,
    *,
    use_instruction: bool = True,
) -> PromptFormat:
    """The evaluation format from text files, or the built-in defaults.

    Args:
        primer: a QA primer file (TruthfulQA's is ``truthfulqa/qa_primer.txt`` in the
            shared data); ``None`` takes fasb_lens' own six-shot primer.
        instruction: an instruction file (``truthfulqa/instruction_prompt.txt``);
            ``None`` takes fasb_lens' own instruction.
        use_instruction: ``False`` leaves the instruction out.
    """
    primer_text = (
        _resource_text("default_primer.txt")
        if primer is None
        else read_text(primer, "a QA primer text file")
    )
    instruction_text = None
    if use_instruction:
        instruction_text = (
            _resource_text("default_instruction.txt")
            if instruction is None
            else read_text(instruction, "an instruction text file")
        ).strip()
    if not primer_text.strip():
        raise DataError(primer or "default_primer.txt", "is empty; expected a QA primer")
    return PromptFormat(primer=primer_text.rstrip("\n"), instruction=instruction_text)


PROMPTS = ("authors", "builtin")
"""The evaluation prompts: the authors' instruction and QA primer (TruthfulQA's files), or
fasb_lens' own."""
AUTHORS_PRIMER = "qa_primer.txt"
AUTHORS_INSTRUCTION = "instruction_prompt.txt"


def _authors_files(folder: Path | None) -> tuple[Path, Path] | None:
    """``(primer, instruction)`` of the authors' prompt in ``folder``, if it holds both."""
    if folder is None:
        return None
    primer, instruction = folder / AUTHORS_PRIMER, folder / AUTHORS_INSTRUCTION
    return (primer, instruction) if primer.is_file() and instruction.is_file() else None


def default_prompt(data: str | Path) -> str:
    """The prompt a TruthfulQA evaluation of ``data`` (as ``--truthfulqa`` names it) uses
    unless told: ``authors`` where its folder holds both of the authors' files (the
    bundled copy does), else ``builtin`` (the mini set, the hub)."""
    return "authors" if _authors_files(truthfulqa_folder(data)) else "builtin"


def prompt_option() -> str | None:
    """The ``--prompt`` option of the commands that evaluate on TruthfulQA questions."""
    return option(
        None,
        help="the evaluation prompt's instruction and QA primer: authors (instruction_prompt"
        ".txt and qa_primer.txt, as the authors' run; the default where the TruthfulQA "
        "folder holds them, as the bundled copy does) or builtin (fasb_lens' own; the "
        "default for the mini set and the hub)",
        choices=PROMPTS,
    )


def truthfulqa_prompt_format(
    data: str | Path = "truthfulqa",
    prompt: str | None = None,
    *,
    primer: str | Path | None = None,
    instruction: str | Path | None = None,
) -> PromptFormat:
    """The evaluation prompt of TruthfulQA questions ``data`` (as ``--truthfulqa`` names
    them): every command builds it here.

    Args:
        data: the questions: ``truthfulqa`` (the bundled copy), ``mini``, ``hub``, a CSV or
            a folder.
        prompt: ``authors`` (the files in the questions' folder, else in the bundled copy)
            or ``builtin`` (fasb_lens' own); ``None`` takes :func:`default_prompt`.
        primer: a QA primer file in place of the prompt's.
        instruction: an instruction file in place of the prompt's.
    """
    prompt = prompt or default_prompt(data)
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}; got {prompt!r}")
    files = None
    if prompt == "authors":
        files = _authors_files(truthfulqa_folder(data)) or _authors_files(bundled_truthfulqa())
    base_primer, base_instruction = files or (None, None)
    return load_prompt_format(primer or base_primer, instruction or base_instruction)
