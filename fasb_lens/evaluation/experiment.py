"""The TruthfulQA protocol behind ``fasb-lens reproduce``: cross-validated, resumable.

One run reproduces the paper's TruthfulQA table for a model: the questions are split into
folds by the authors' protocol; for each fold the heads are anchored on the training
questions, every setting is calibrated on its validation questions, and every policy is
evaluated on the held-out ones, by multiple choice (MC1, MC2, MC3) and by open-ended
generation judged by each requested judge.

Everything goes under one run folder (:class:`~fasb_lens.evaluation.run.RunFolder`),
written as it comes:

* ``config.json`` - the settings (a second run in the same folder must match them);
* ``activations/`` and ``folds/fold{k}/`` - activations, each fold's artifacts and
  calibration;
* ``records.jsonl`` - one line per (fold, question, task, policy), appended whole, so the
  same command resumes where it stopped; a generation record holds the whole trace;
* ``judgements.jsonl`` - one line per (fold, question, policy, judge);
* the summary (:mod:`fasb_lens.evaluation.summary`) and ``timings.json``.

Under ``torchrun`` the processes share each phase (:mod:`fasb_lens.distributed`): the
activations' chunks, the folds' calibrations, the chunks of test questions scored
together, the generation batches and the judges, each computed whole by one process (or
one group) as a single process computes it, so the records and the table do not depend
on how many processes ran them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens.anchoring import (
    AnchoringActivations,
    collect_anchoring_activations,
    fit_anchoring,
    truthfulqa_prompts,
)
from fasb_lens.data import TruthfulQAQuestion, context_prompts, load_prompt_format, load_questions
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.held_out import HeldOutEvaluation
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name
from fasb_lens.evaluation.policies import run_policies
from fasb_lens.evaluation.records import fold_folder, run_logs
from fasb_lens.evaluation.run import RunFolder
from fasb_lens.evaluation.summary import write_summary
from fasb_lens.evaluation.truthfulqa_calibration import CalibrationInputs, calibrate_fold
from fasb_lens.models import model_shape, tokenize
from fasb_lens.policies import Policy, push_report
from fasb_lens.prefix import SharedPrefix
from fasb_lens.profiling import section
from fasb_lens.splits import Split, authors_folds, authors_question_order, subsample_train
from fasb_lens.steering import CAAVector, Steering
from fasb_lens.trackers import TRACKERS

logger = logging.getLogger(__name__)

JUDGING_CHUNK = 64
"""Answers judged per call of a judge."""


@dataclass
class _Fold:
    split: Split
    steering: Steering
    policies: dict[str, dict[str, Policy]] = field(default_factory=dict)  # task -> name -> policy
    calibration: Calibration | None = None


class Experiment(HeldOutEvaluation):
    """A run folder: anchoring per fold, evaluation, judging and the summary."""

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
        self.activations_dir = Path(activations_dir or self.out / storage.ACTIVATIONS_DIR)
        self.progress = progress
        self.questions = self._questions()
        self.folds_splits = authors_folds(
            [q.id for q in self.questions],
            n_folds=config.n_folds,
            val_fraction=config.val_fraction,
            seed=config.seed,
        )
        self.fmt = load_prompt_format(config.primer, config.instruction)
        self.model = model if model is not None else config.model.load()
        self._check_model()
        self.records, self.judgements = self.folder.track(*run_logs(self.out))
        prompts = [self.fmt.generation_prompt(q.question) for q in self.questions]
        self.shared = SharedPrefix.build(self.model, tokenize(self.model, prompts))

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

    # ----------------------------------------------------------------------- anchoring

    @property
    def caa_layer(self) -> int:
        layer = self.config.caa_layer
        return self.model.cfg.n_layers // 2 if layer is None else layer

    def _activations(self) -> AnchoringActivations:
        """Probing, tuning (and residual, and context) activations of every question, in
        file order.

        File order and ``tuning_seed`` are those of ``fasb-lens collect``, so the folders
        it writes can be copied into ``activations/`` instead of being computed again.
        """
        config = self.config
        questions = sorted(self.questions, key=lambda question: question.id)
        answers = config.probe_answers
        probing, tuning = truthfulqa_prompts(
            questions,
            tuning_seed=config.tuning_seed,
            answers=answers,  # type: ignore[arg-type]
        )
        context = None
        if any(TRACKERS.get(name).source == "context" for name in config.trackers_used):
            context = context_prompts(questions, self.fmt, answers=answers)  # type: ignore[arg-type]
        return collect_anchoring_activations(
            self.model,
            probing,
            tuning,
            residual_layer=self.caa_layer if config.needs_caa else None,
            context=context,
            out_dir=self.activations_dir,
            progress=self.progress,
        )

    def anchor(self) -> list[_Fold]:
        """Probes, anchored heads, steering (and CAA) vectors for every fold, then each
        fold's calibration (which also chooses how many heads it keeps)."""
        with section("activations"):
            activations = self._activations()
        config = self.config
        shape = activations.probing.shape
        # calibration may extend its K candidates up to every head
        widest = shape.n_layers * shape.n_heads if config.calibrate else config.top_k
        folds: dict[int, _Fold] = {}
        # with several processes, each fold is calibrated by a group of them
        with distributed.split(len(self.folds_splits)) as (group, groups):
            for index, split in enumerate(self.folds_splits):
                if index % groups == group:
                    with section(f"fold {split.fold}"):
                        folds[split.fold] = self._anchor_fold(activations, split, widest)
        distributed.barrier()
        for split in self.folds_splits:  # the others' folds: their calibration.json is written
            if split.fold not in folds:
                with section(f"fold {split.fold}"):
                    folds[split.fold] = self._anchor_fold(activations, split, widest)
        return [folds[split.fold] for split in self.folds_splits]

    def _anchor_fold(self, activations: AnchoringActivations, split: Split, widest: int) -> _Fold:
        """One fold's probes and vectors (on ``widest`` heads), then its calibration."""
        config = self.config
        split = subsample_train(split, config.train_fraction, config.seed + split.fold)
        with section("probes and vectors"):
            anchoring = fit_anchoring(
                activations,
                split,
                top_k=widest,
                direction=config.direction,  # type: ignore[arg-type]
                seed=config.seed,
                defaults=config.settings(),
                progress=False,
            )
        folder = fold_folder(self.out, split.fold)
        steering, calibration = anchoring.steering, None
        if config.calibrate:
            with section("calibration"):
                calibration, steering = self._calibration(split, steering, anchoring.caa, folder)
        else:
            steering = steering.subset(steering.heads[: config.top_k])
        anchoring.steering = steering
        anchoring.save(folder)
        policies = run_policies(config, anchoring.caa, calibration)
        return _Fold(split, steering, policies, calibration)

    def _calibration(
        self, split: Split, steering: Steering, caa: CAAVector | None, folder: Path
    ) -> tuple[Calibration, Steering]:
        """The fold's tracker, K, thresholds and strengths, chosen on its validation
        questions (kept in ``calibration.json``, so a resumed run does not redo them)."""
        if (folder / storage.CALIBRATION).is_file():
            calibration = Calibration.load(folder)
            return calibration, steering.subset(steering.heads[: calibration.top_k])
        val = set(split.val)
        config = self.config
        questions = [q for q in self.questions if q.id in val]
        inputs = CalibrationInputs(
            self.model,
            questions[: config.calibration_questions],
            steering,
            self.fmt,
            replace(config.settings(), caa=caa),
            shared=self.shared,
            mc_source=config.mc_source,
            answer_offset=config.mc_offset,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            judge=config.calibration_judge,
            info_judge=config.calibration_info_judge,
            progress=self.progress,
            max_kl=config.max_kl,
        )
        calibration, steering = calibrate_fold(
            inputs,
            tasks=config.tasks,
            tracker=config.tracker,
            candidates=config.auto_trackers,
            top_ks=config.top_ks,
            seed=config.seed + split.fold,
        )
        calibration.push = push_report(steering, self.model)
        if distributed.is_main():  # one process of the fold's group writes it
            calibration.save(folder)
        return calibration, steering

    # ----------------------------------------------------------------------- evaluation

    def _test_questions(self, fold: _Fold) -> list[TruthfulQAQuestion]:
        test = set(fold.split.test)
        return [question for question in self.questions if question.id in test]

    def judge(self) -> None:
        """Every generated answer by every judge, except those already judged."""
        generations = [r for r in self.records.values() if r["task"] == "generation"]
        by_id = {question.id: question for question in self.questions}
        # several processes: each judge runs whole in one (a judge may keep what it
        # computed for later chunks, e.g. the embedding judge its vectors)
        for name in distributed.share(self.config.judges):
            todo = [
                r
                for r in generations
                if (r["fold"], r["question_id"], r["policy"], name) not in self.judgements
            ]
            if not todo:
                continue
            with section(name):
                self._judge_with(name, todo, by_id)

    def _judge_with(self, name: str, todo: list[dict], by_id: dict) -> None:
        """``todo`` (generation records) judged by the judge ``name``."""
        judge = judge_by_name(name)
        chunks = range(0, len(todo), JUDGING_CHUNK)
        for start in tqdm(chunks, desc=f"judge {name}", disable=not self.progress):
            chunk = todo[start : start + JUDGING_CHUNK]
            inputs = [
                JudgeInput(
                    question=by_id[r["question_id"]].question,
                    answer=r["answer"],
                    correct=by_id[r["question_id"]].correct_answers,
                    incorrect=by_id[r["question_id"]].incorrect_answers,
                )
                for r in chunk
            ]
            for record, verdict in zip(chunk, judge.judge_many(inputs), strict=True):
                where = {key: record[key] for key in ("fold", "question_id", "policy")}
                self.judgements.append({**where, "judge": name, **asdict(verdict)})

    def run(self) -> dict[str, Any]:
        """Anchor, evaluate every fold, judge, and write the summary; returns it.

        Unsteered answers come first (the leak-free multiple-choice protocol decides from
        them), then multiple choice on every fold, then the other policies' answers.
        """
        phase = partial(self.folder.phase, sync=True)
        with phase("anchoring and calibration"):
            folds = self.anchor()
        if "generation" in self.config.tasks:
            with phase("unsteered answers"):
                for fold in folds:
                    self.evaluate_generation(fold, ["none"])
        if "mc" in self.config.tasks:
            with phase("multiple choice"):
                for fold in folds:
                    self.evaluate_mc(fold)
        if "generation" in self.config.tasks:
            with phase("generation"):
                for fold in folds:
                    self.evaluate_generation(fold)
        with phase("judging and summary"):
            summary = self.summarize()
        self.folder.finish()
        return summary

    def summarize(self) -> dict[str, Any]:
        """Judge the answers recorded so far and write the summary; evaluates nothing new.

        On a run that was interrupted (or is still going) this gives the table of what is
        done; ``n_mc`` and ``n_generation`` in ``results.json`` say how many questions each
        number rests on, and fold means skip folds without results.
        """
        if "generation" in self.config.tasks:
            self.judge()
        self.folder.sync()
        if not distributed.is_main():  # the main process writes the summary
            return {}
        calibrations = {}
        for split in self.folds_splits:
            folder = fold_folder(self.out, split.fold)
            if (folder / storage.CALIBRATION).is_file():
                calibrations[str(split.fold)] = Calibration.load(folder).summary()
        records, judgements = self.records.values(), self.judgements.values()
        return write_summary(self.out, self.config, records, judgements, calibrations)
