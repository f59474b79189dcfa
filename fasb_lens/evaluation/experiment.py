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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens.data import TruthfulQAQuestion, load_questions, truthfulqa_prompt_format
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.folds import Fold, FoldSetup, seed_splits
from fasb_lens.evaluation.held_out import HeldOutEvaluation
from fasb_lens.evaluation.judging import judge_answers
from fasb_lens.evaluation.policies import policy_draws, question_label
from fasb_lens.evaluation.records import fold_folder, run_logs
from fasb_lens.evaluation.run import RunFolder
from fasb_lens.evaluation.summary import stratum_name, write_summary
from fasb_lens.models import model_shape, tokenize
from fasb_lens.prefix import SharedPrefix
from fasb_lens.profiling import section
from fasb_lens.splits import authors_question_order

logger = logging.getLogger(__name__)


class Experiment(HeldOutEvaluation):
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
