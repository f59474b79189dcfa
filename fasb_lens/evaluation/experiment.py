"""The TruthfulQA protocol behind ``fasb-lens reproduce``: cross-validated, resumable.

One run reproduces the paper's TruthfulQA table for a model: for each split seed
(``--seeds``; the authors' 42 by default) the questions are split into folds by the
authors' protocol; for each fold the heads are anchored on the training questions, every
setting is calibrated on its validation questions, and every policy is evaluated on the
held-out ones, by multiple choice (MC1, MC2, MC3) and by open-ended generation judged by
each requested judge (:mod:`~fasb_lens.evaluation.folds` anchors and calibrates,
:mod:`~fasb_lens.evaluation.judging` judges). Seeds run one after the other, each whole,
and their records pool into one table: each question is then evaluated once per seed, and
the intervals resample questions with all their seeds
(:mod:`~fasb_lens.evaluation.uncertainty`).

Everything goes under one run folder (:class:`~fasb_lens.evaluation.run.RunFolder`),
written as it comes:

* ``config.json`` - the settings (a second run in the same folder must match them);
* ``activations/`` and ``folds/seed{S}/fold{k}/`` - activations (shared by the seeds),
  each fold's artifacts and calibration;
* ``records.jsonl`` - one line per (seed, fold, question, task, policy), appended whole,
  so the same command resumes where it stopped (a seed whose records are all written is
  not anchored again); a generation record holds the whole trace;
* ``judgements.jsonl`` - one line per (seed, fold, question, policy, judge);
* the summary (:mod:`fasb_lens.evaluation.summary`) and ``timings.json`` (with several
  seeds, each phase's profile has a section per seed).

Under ``torchrun`` the processes share each phase (:mod:`fasb_lens.distributed`): the
activations' chunks, the folds' calibrations, the chunks of test questions scored
together, the generation batches and the judges, each computed whole by one process (or
one group) as a single process computes it, so the records and the table do not depend
on how many processes ran them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens.data import TruthfulQAQuestion, load_questions, truthfulqa_prompt_format
from fasb_lens.decoding import PromptCache
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.folds import Fold, FoldSetup, seed_splits
from fasb_lens.evaluation.judging import judge_answers
from fasb_lens.evaluation.policies import policy_draws, question_label
from fasb_lens.evaluation.records import (
    fold_folder,
    generation_record,
    record_trace,
    run_logs,
)
from fasb_lens.evaluation.run import RunFolder, pending_chunks
from fasb_lens.evaluation.summary import stratum_name, write_summary
from fasb_lens.evaluation.truthfulqa import decide_once
from fasb_lens.generation import QA_STOP, GenerationConfig, generate
from fasb_lens.models import model_shape, tokenize
from fasb_lens.multiple_choice import MultipleChoice, evaluate_together
from fasb_lens.policies import Policy, adjusted, redraw, setting
from fasb_lens.prefix import SharedPrefix
from fasb_lens.profiling import section
from fasb_lens.scoring import ROWS
from fasb_lens.splits import authors_question_order

logger = logging.getLogger(__name__)


class Experiment:
    """A run folder: for each split seed anchoring per fold and evaluation; then judging
    and the summary of every seed together."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: str | Path,
        *,
        model: TransformerBridge | None = None,
        activations_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.folder = RunFolder(out, config, load=ExperimentConfig.from_dict, command="reproduce")
        self.out = self.folder.out
        self.progress = progress
        self.questions = self._questions()
        self.splits = seed_splits(config, [q.id for q in self.questions])
        self.fmt = truthfulqa_prompt_format(
            config.data, config.prompt, primer=config.primer, instruction=config.instruction
        )
        self.model = model if model is not None else config.model.load()
        self._check_model()
        # records that name no seed come from a run made before seeds: its one seed
        self.records, self.judgements = self.folder.track(*run_logs(self.out, config.seeds[0]))
        prompts = [self.fmt.generation_prompt(q.question) for q in self.questions]
        self.shared = SharedPrefix.build(self.model, tokenize(self.model, prompts))
        self.setup = FoldSetup(
            self.model,
            config,
            self.out,
            self.questions,
            self.fmt,
            self.shared,
            activations_dir=Path(activations_dir or self.out / storage.ACTIVATIONS_DIR),
            progress=progress,
        )

    @property
    def timings(self) -> dict[str, float]:
        return self.folder.timings

    def _questions(self) -> list[TruthfulQAQuestion]:
        """The run's questions in the authors' order (the first ``n_questions``)."""
        config = self.config
        questions = load_questions(config.data, mc_task=config.mc_task)
        order = authors_question_order(questions)
        if config.n_questions is not None:
            if config.n_questions > len(order):
                raise ValueError(
                    f"--questions {config.n_questions} is more than the {len(order)} questions "
                    f"in {config.data}"
                )
            order = order[: config.n_questions]
        by_id = {question.id: question for question in questions}
        chosen = [by_id[qid] for qid in order]
        if "mc" in config.tasks and config.mc_source == "mc_task":
            lacking = [q.id for q in chosen if not q.mc1_targets]
            if lacking:
                raise ValueError(
                    f"{len(lacking)} questions (first: {lacking[0]}) have no mc_task.json "
                    "targets; load a folder with mc_task.json or use --mc-source csv"
                )
        return chosen

    def _check_model(self) -> None:
        shape = model_shape(self.model)
        n_heads = shape.n_layers * shape.n_heads
        if self.config.top_k > n_heads:
            raise ValueError(f"top_k {self.config.top_k} is more than the model's {n_heads} heads")
        layer = self.config.caa_layer
        if layer is not None and layer >= shape.n_layers:
            raise ValueError(
                f"caa_layer {layer} is not a layer of this model (0..{shape.n_layers - 1})"
            )

    # ----------------------------------------------------------------------- seeds

    def anchor(self, seed: int | None = None) -> list[Fold]:
        """Every fold of split seed ``seed`` (by default the first) anchored and
        calibrated (:class:`~fasb_lens.evaluation.folds.FoldSetup`)."""
        return self.setup.anchor(self.splits[self.config.seeds[0] if seed is None else seed])

    @staticmethod
    def _key(fold: Fold, question_id: str, task: str, policy: str) -> tuple:
        """The key of a fold's record (:func:`~fasb_lens.evaluation.records.record_key`)."""
        return (fold.seed, fold.number, question_id, task, policy)

    def _where(self, fold: Fold) -> str:
        """A fold in words: ``fold 1``, or with several seeds ``seed 7 fold 1``."""
        several = len(self.config.seeds) > 1
        return (f"seed {fold.seed} " if several else "") + f"fold {fold.number}"

    def _seed_section(self, seed: int) -> Any:
        """The profile section of one seed's work: ``seed S`` with several seeds; with
        one, none (its profile reads as before seeds: phase, fold, ...)."""
        return section(f"seed {seed}") if len(self.config.seeds) > 1 else nullcontext()

    def finished(self, seed: int) -> bool:
        """Whether every record of ``seed``'s cross-validation is written (every test
        question under every policy of every task, and the leak-free protocol's where
        its unsteered answer is), so that a resumed run skips the seed whole."""
        config = self.config
        labels = {
            task: [label for label, _, _ in policy_draws(config, task)] for task in config.tasks
        }
        protocol = config.question_protocol and "generation" in config.tasks and "mc" in labels
        leak_free = [q for q in map(question_label, labels.get("mc", ())) if q is not None]
        for split in self.splits[seed]:
            for qid in split.test:
                wanted = [(task, name) for task, names in labels.items() for name in names]
                if protocol and (seed, split.fold, qid, "generation", "none") in self.records:
                    wanted += [("mc", name) for name in leak_free]
                if any(
                    (seed, split.fold, qid, task, name) not in self.records for task, name in wanted
                ):
                    return False
        return True

    # ----------------------------------------------------------------------- evaluation

    def _test_questions(self, fold: Fold) -> list[TruthfulQAQuestion]:
        test = set(fold.split.test)
        return [question for question in self.questions if question.id in test]

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

    def _drawn(self, seed: int, name: str, policy: Policy, *where: Any) -> Policy:
        """A control's policy with the random directions of its draw at ``where`` (a
        question, or a generation batch) under split seed ``seed``; other policies as they
        are."""
        draw = name.partition("/")[2]
        return redraw(policy, seed, draw, *where)

    def _mc_policies(self, fold: Fold, question: TruthfulQAQuestion) -> dict[str, Policy]:
        named = {**fold.policies["mc"], **self._question_policies(fold, question)}
        return {
            name: self._drawn(fold.seed, name, policy, question.id)
            for name, policy in named.items()
        }

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
        under one policy and append their records; a control draws its directions once
        per batch."""
        config = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens, stop_strings=(QA_STOP,)
        )
        questions = [batch[i] for i in todo]
        plain = [self.records.get(self._key(fold, q.id, "generation", "none")) for q in questions]
        traces = generate(
            self.model,
            [prompts[i] for i in todo],
            policy=self._drawn(fold.seed, name, policy, fold.split.fold, batch[0].id),
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

    def judge(self) -> None:
        """Every generated answer by every judge, except those already judged."""
        judge_answers(
            self.config.judges,
            self.questions,
            self.records,
            self.judgements,
            progress=self.progress,
        )

    def run(self) -> dict[str, Any]:
        """For each split seed: anchor, evaluate every fold; then judge, and write the
        summary; returns it. A seed whose records are all written is skipped whole.

        Unsteered answers come first (the leak-free multiple-choice protocol decides from
        them), then multiple choice on every fold, then the other policies' answers.
        """
        phase = partial(self.folder.phase, sync=True)
        for seed in self.config.seeds:
            if not self.finished(seed):
                self._run_seed(seed, phase)
        with phase("judging and summary"):
            summary = self.summarize()
        self.folder.finish()
        return summary

    def _run_seed(self, seed: int, phase: Callable[[str], Any]) -> None:
        """One split seed's whole cross-validation, phase by phase (each phase's time is
        summed over the seeds)."""

        @contextmanager
        def step(name: str) -> Iterator[None]:
            with phase(name), self._seed_section(seed):
                yield

        tasks = self.config.tasks
        with step("anchoring and calibration"):
            folds = self.anchor(seed)
        if "generation" in tasks:
            with step("unsteered answers"):
                for fold in folds:
                    self.evaluate_generation(fold, ["none"])
        if "mc" in tasks:
            with step("multiple choice"):
                for fold in folds:
                    self.evaluate_mc(fold)
        if "generation" in tasks:
            with step("generation"):
                for fold in folds:
                    self.evaluate_generation(fold)

    def summarize(self) -> dict[str, Any]:
        """Judge the answers recorded so far and write the summary; evaluates nothing new.

        On a run that was interrupted (or is still going) this gives the table of what is
        done; ``n_mc`` and ``n_generation`` in ``results.json`` say how many questions each
        number rests on (a question once per seed), and fold means skip folds without
        results.
        """
        if "generation" in self.config.tasks:
            self.judge()
        self.folder.sync()
        if not distributed.is_main():  # the main process writes the summary
            return {}
        calibrations = {}
        for seed, splits in self.splits.items():
            for split in splits:
                folder = fold_folder(self.out, split.fold, seed)
                if (folder / storage.CALIBRATION).is_file():
                    name = stratum_name(self.config, seed, split.fold)
                    calibrations[name] = Calibration.load(folder).summary()
        records, judgements = self.records.values(), self.judgements.values()
        return write_summary(self.out, self.config, records, judgements, calibrations)
