"""The held-out half of the TruthfulQA experiment: every test question under every policy.

Multiple choice scores a chunk of test questions under every policy in shared forwards;
generation answers a batch of questions under one policy at a time (a control with each
question's own random directions), reusing the unsteered answers a policy never acts on.
Both append whole records to the run's log and skip what it already holds, so a killed
run resumes where it stopped. Records are keyed by (split seed, fold, question, task,
policy). :class:`HeldOutEvaluation` is the part of
:class:`~fasb_lens.evaluation.experiment.Experiment` that does it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from fasb_lens import distributed
from fasb_lens.data import TruthfulQAQuestion
from fasb_lens.decoding import PromptCache
from fasb_lens.evaluation.policies import question_label
from fasb_lens.evaluation.records import generation_record, record_trace
from fasb_lens.evaluation.run import pending_chunks
from fasb_lens.evaluation.truthfulqa import decide_once
from fasb_lens.generation import QA_STOP, GenerationConfig, generate
from fasb_lens.multiple_choice import MultipleChoice, evaluate_together
from fasb_lens.policies import Policy, adjusted, redraw, setting
from fasb_lens.profiling import section
from fasb_lens.scoring import ROWS

if TYPE_CHECKING:
    from fasb_lens.evaluation.folds import Fold


class HeldOutEvaluation:
    """Evaluating a fold's test questions (mixed into the experiment, whose run log,
    model, prompt format and settings it uses)."""

    records: Any
    config: Any
    model: Any
    fmt: Any
    shared: Any
    progress: bool
    _test_questions: Callable[[Fold], list[TruthfulQAQuestion]]

    @staticmethod
    def _key(fold: Fold, question_id: str, task: str, policy: str) -> tuple:
        """The key of a fold's record (:func:`~fasb_lens.evaluation.records.record_key`)."""
        return (fold.seed, fold.number, question_id, task, policy)

    def _where(self, fold: Fold) -> str:
        """A fold in words: ``fold 1``, or with several seeds ``seed 7 fold 1``."""
        several = len(self.config.seeds) > 1
        return (f"seed {fold.seed} " if several else "") + f"fold {fold.number}"

    def _question_policies(self, fold: Fold, question: TruthfulQAQuestion) -> dict[str, Policy]:
        """The leak-free protocol's policies for one question (``NAME_question``), decided
        from the model's own unsteered answer (the ``none`` generation record) with the
        generation threshold, at the multiple-choice strength."""
        if not self.config.question_protocol or "generation" not in self.config.tasks:
            return {}
        record = self.records.get(self._key(fold, question.id, "generation", "none"))
        if record is None:
            return {}
        trace = record_trace(record)
        decided = {}
        for name, policy in fold.policies["mc"].items():
            label = question_label(name)
            if label is None:
                continue
            threshold = setting(fold.policies["generation"][name], "threshold")
            decided[label] = decide_once(adjusted(policy, threshold=threshold), trace)
        return decided

    @staticmethod
    def _drawn(seed: int, name: str, policy: Policy, *where: Any) -> Policy:
        """A control's policy with the random directions of its draw at ``where`` (a
        question) under split seed ``seed``; other policies as they are."""
        draw = name.partition("/")[2]
        return redraw(policy, seed, draw, *where)

    def _mc_policies(self, fold: Fold, question: TruthfulQAQuestion) -> dict[str, Policy]:
        named = {**fold.policies["mc"], **self._question_policies(fold, question)}
        return {n: self._drawn(fold.seed, n, p, question.id) for n, p in named.items()}

    def evaluate_mc(self, fold: Fold) -> None:
        """Every test question's multiple choice under every policy, :data:`ROWS` questions
        at a time (their passes share forwards). A chunk with anything missing is scored
        again whole, so that a question's scores always come from the same forwards (a
        resumed run's equal an uninterrupted one's bit for bit)."""
        questions = self._test_questions(fold)
        bar = tqdm(
            total=len(questions),
            desc=f"MC {self._where(fold)}",
            unit="question",
            disable=not self.progress,
        )
        policies = {question.id: self._mc_policies(fold, question) for question in questions}

        def missing(question: TruthfulQAQuestion) -> set[str]:
            named = policies[question.id]
            return {n for n in named if self._key(fold, question.id, "mc", n) not in self.records}

        for chunk, wanted in distributed.share(pending_chunks(questions, ROWS, missing)):
            self._score_chunk(fold, chunk, wanted, policies)
            bar.update(len(chunk))
        bar.close()

    def _score_chunk(self, fold: Fold, chunk: list, wanted: list[set[str]], policies: dict) -> None:
        """One chunk of test questions' multiple choice, every policy in shared forwards;
        the records that were missing are appended."""
        key = fold.split.fold
        with section(f"fold {key}"):
            choices = [
                MultipleChoice(
                    self.model,
                    question,
                    fmt=self.fmt,
                    steering=fold.steering,
                    source=self.config.mc_source,
                    answer_offset=self.config.mc_offset,
                    shared=self.shared,
                )
                for question in chunk
            ]
            results = evaluate_together(choices, [policies[q.id] for q in chunk])
        for question, names, scored in zip(chunk, wanted, results, strict=True):
            for name in (name for name in scored if name in names):
                record = {"seed": fold.seed, "fold": key, "question_id": question.id, "task": "mc"}
                self.records.append({**record, "policy": name, **scored[name]})

    def evaluate_generation(self, fold: Fold, policies: Sequence[str] | None = None) -> None:
        """Every test question's answer under every policy (or those named), a batch of
        ``batch_size`` prompts at a time; answers the records hold are not generated again."""
        questions = self._test_questions(fold)
        chosen = {
            name: policy
            for name, policy in fold.policies["generation"].items()
            if policies is None or name in policies
        }
        bar = tqdm(
            total=len(questions) * len(chosen),
            desc=f"generation {self._where(fold)}",
            unit="answer",
            disable=not self.progress,
        )
        size = self.config.batch_size
        for start in distributed.share(range(0, len(questions), size)):
            batch = questions[start : start + size]
            prompts = [self.fmt.generation_prompt(q.question) for q in batch]
            shared = None  # the prompts' cache, built once and shared by every policy
            for name, policy in chosen.items():
                todo = [
                    i
                    for i, q in enumerate(batch)
                    if self._key(fold, q.id, "generation", name) not in self.records
                ]
                bar.update(len(batch) - len(todo))
                if not todo:
                    continue
                if len(todo) == len(batch) and shared is None:
                    shared = PromptCache.build(self.model, prompts, shared=self.shared)
                cache = shared if len(todo) == len(batch) else None
                with section(f"fold {fold.split.fold}"), section(name):
                    self._generate_batch(fold, name, policy, batch, prompts, todo, cache)
                bar.update(len(todo))
        bar.close()

    def _generate_batch(self, fold, name, policy, batch, prompts, todo, cache) -> None:
        """Generate the questions at ``todo`` of ``batch`` (whose prompts are ``prompts``)
        under one policy and append their records; a control draws its directions per
        question (as in multiple choice), all in one batch."""
        config = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens, stop_strings=(QA_STOP,)
        )
        questions = [batch[i] for i in todo]
        plain = [self.records.get(self._key(fold, q.id, "generation", "none")) for q in questions]
        traces = generate(
            self.model,
            [prompts[i] for i in todo],
            policy=[self._drawn(fold.seed, name, policy, question.id) for question in questions],
            steering=fold.steering,
            config=config,
            prompt_cache=cache,
            shared=self.shared,
            unsteered=[record_trace(r) for r in plain] if all(plain) else None,
        )
        for question, trace in zip(questions, traces, strict=True):
            self.records.append(
                generation_record(fold.seed, fold.split.fold, question, name, trace)
            )
