"""The folds of a `reproduce` run, per split seed: anchored, then calibrated.

Every split seed cuts the questions into the authors' folds (:func:`seed_splits`: the
same contiguous test folds, each seed drawing its own validation questions from each
training pool). :class:`FoldSetup` collects the activations once (they do not depend on
the split; a later seed reads them back from ``activations/``), then for each fold of a
seed fits the probes and vectors on its training questions and calibrates every setting
on its validation questions, writing the fold's artifacts and ``calibration.json`` into
``folds/seed{S}/fold{k}/``; a resumed run reads the calibration back instead of redoing
it.

Under ``torchrun`` each fold is calibrated by a group of processes
(:func:`fasb_lens.distributed.split`), as a single process computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens.anchoring import (
    AnchoringActivations,
    collect_anchoring_activations,
    fit_anchoring,
    truthfulqa_prompts,
)
from fasb_lens.data import PromptFormat, TruthfulQAQuestion, context_prompts
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.policies import run_policies
from fasb_lens.evaluation.records import fold_folder
from fasb_lens.evaluation.truthfulqa_calibration import CalibrationInputs, calibrate_fold
from fasb_lens.policies import Policy, push_report
from fasb_lens.prefix import SharedPrefix
from fasb_lens.profiling import section
from fasb_lens.splits import Split, authors_folds, subsample_train
from fasb_lens.steering import CAAVector, Steering
from fasb_lens.trackers import TRACKERS


@dataclass
class Fold:
    """One fold of one split seed, ready to evaluate: its split, steering and policies."""

    split: Split
    steering: Steering
    policies: dict[str, dict[str, Policy]] = field(default_factory=dict)  # task -> name -> policy
    calibration: Calibration | None = None

    @property
    def seed(self) -> int:
        """The split seed the fold belongs to."""
        return int(self.split.seed)  # type: ignore[arg-type]

    @property
    def number(self) -> int:
        return self.split.fold


def seed_splits(config: ExperimentConfig, question_ids: Sequence[str]) -> dict[int, list[Split]]:
    """Per split seed (in the run's order), the authors' folds of ``question_ids``."""
    return {
        seed: authors_folds(
            list(question_ids), n_folds=config.n_folds, val_fraction=config.val_fraction, seed=seed
        )
        for seed in config.seeds
    }


class FoldSetup:
    """Each fold's anchoring and calibration for one run (activations collected once)."""

    def __init__(
        self,
        model: TransformerBridge,
        config: ExperimentConfig,
        out: Path,
        questions: list[TruthfulQAQuestion],
        fmt: PromptFormat,
        shared: SharedPrefix,
        *,
        activations_dir: Path,
        progress: bool,
    ) -> None:
        self.model, self.config, self.out = model, config, out
        self.questions, self.fmt, self.shared = questions, fmt, shared
        self.activations_dir, self.progress = activations_dir, progress

    @property
    def caa_layer(self) -> int:
        layer = self.config.caa_layer
        return self.model.cfg.n_layers // 2 if layer is None else layer

    def activations(self) -> AnchoringActivations:
        """Probing, tuning (and residual, and context) activations of every question, in
        file order; collected once, then read back (for each seed: they are not kept in
        memory while the folds are evaluated).

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

    def anchor(self, splits: list[Split]) -> list[Fold]:
        """Probes, anchored heads, steering (and CAA) vectors for every fold of one split
        seed, then each fold's calibration (which also chooses how many heads it keeps)."""
        with section("activations"):
            activations = self.activations()
        shape = activations.probing.shape
        # calibration may extend its K candidates up to every head
        widest = shape.n_layers * shape.n_heads if self.config.calibrate else self.config.top_k
        folds: dict[int, Fold] = {}
        # with several processes, each fold is calibrated by a group of them
        with distributed.split(len(splits)) as (group, groups):
            for index, split in enumerate(splits):
                if index % groups == group:
                    with section(f"fold {split.fold}"):
                        folds[split.fold] = self._anchor_fold(activations, split, widest)
        distributed.barrier()
        for split in splits:  # the others' folds: their calibration.json is written
            if split.fold not in folds:
                with section(f"fold {split.fold}"):
                    folds[split.fold] = self._anchor_fold(activations, split, widest)
        return [folds[split.fold] for split in splits]

    def _anchor_fold(self, activations: AnchoringActivations, split: Split, widest: int) -> Fold:
        """One fold's probes and vectors (on ``widest`` heads), then its calibration."""
        config, seed = self.config, int(split.seed)  # type: ignore[arg-type]
        split = subsample_train(split, config.train_fraction, seed + split.fold)
        with section("probes and vectors"):
            anchoring = fit_anchoring(
                activations,
                split,
                top_k=widest,
                direction=config.direction,  # type: ignore[arg-type]
                seed=seed,
                defaults=config.settings(),
                progress=False,
            )
        folder = fold_folder(self.out, split.fold, seed)
        steering, calibration = anchoring.steering, None
        if config.calibrate:
            with section("calibration"):
                calibration, steering = self._calibration(split, steering, anchoring.caa, folder)
        else:
            steering = steering.subset(steering.heads[: config.top_k])
        anchoring.steering = steering
        anchoring.save(folder)
        policies = run_policies(config, anchoring.caa, calibration)
        return Fold(split, steering, policies, calibration)

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
            policies=config.policies,
        )
        calibration, steering = calibrate_fold(
            inputs,
            tasks=config.tasks,
            tracker=config.tracker,
            candidates=config.auto_trackers,
            top_ks=config.top_ks,
            seed=int(split.seed) + split.fold,  # type: ignore[arg-type]
        )
        calibration.push = push_report(steering, self.model)
        if distributed.is_main():  # one process of the fold's group writes it
            calibration.save(folder)
        return calibration, steering
