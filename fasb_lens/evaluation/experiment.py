"""The experiment runner behind ``fasb-lens reproduce``: cross-validated, resumable.

One run reproduces the paper's TruthfulQA table for a model: the questions are split into
folds by the authors' protocol; for each fold the heads are anchored on the training
questions and every method is evaluated on the held-out ones, by multiple choice (MC1,
MC2, MC3) and by open-ended generation judged by each requested judge.

Everything goes under one run directory, written as it comes:

* ``config.json`` - the settings (a second run in the same directory must match them);
* ``activations/`` and ``folds/fold{k}/`` - activations and each fold's artifacts;
* ``records.jsonl`` - one line per (fold, question, task, method), appended whole and
  flushed at once, so a killed run loses at most the line being written and the same
  command resumes where it stopped; a generation record holds the whole trace;
* ``judgements.jsonl`` - one line per (fold, question, method, judge);
* the summary (:mod:`fasb_lens.evaluation.summary`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens.anchoring import (
    AnchoringActivations,
    collect_anchoring_activations,
    fit_anchoring,
    truthfulqa_prompts,
)
from fasb_lens.data import TruthfulQAQuestion, load_prompt_format, load_questions
from fasb_lens.decoding import PromptCache
from fasb_lens.evaluation.calibration import Calibration, calibrate
from fasb_lens.evaluation.config import TASKS, ExperimentConfig
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name
from fasb_lens.evaluation.summary import write_summary
from fasb_lens.evaluation.truthfulqa import evaluate_mc
from fasb_lens.generation import QA_STOP, GenerationConfig, GenerationTrace, generate
from fasb_lens.models import load_model, model_shape
from fasb_lens.policies import Policy, make_policy, policy_spec
from fasb_lens.probes import HeadProbes
from fasb_lens.splits import Split, authors_folds, authors_question_order
from fasb_lens.steering import CAAVector, PolicyDefaults, Steering

logger = logging.getLogger(__name__)


def record_key(record: dict[str, Any]) -> tuple:
    """A run record's key: one per (fold, question, task, method)."""
    return (record["fold"], record["question_id"], record["task"], record["method"])


def judgement_key(record: dict[str, Any]) -> tuple:
    """A judgement's key: one per (fold, question, method, judge)."""
    return (record["fold"], record["question_id"], record["method"], record["judge"])


def fold_folder(out: str | Path, fold: int) -> Path:
    return Path(out) / "folds" / f"fold{fold}"


@dataclass
class _Fold:
    split: Split
    steering: Steering
    policies: dict[str, dict[str, Policy]] = field(default_factory=dict)  # task -> name -> policy
    calibration: Calibration | None = None


class Experiment:
    """A run directory: anchoring per fold, evaluation, judging and the summary."""

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
        self.out = Path(out)
        self.activations_dir = Path(activations_dir or self.out / "activations")
        self.progress = progress
        self._check_config()
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
        self.questions: list[TruthfulQAQuestion] = [by_id[qid] for qid in order]
        if "mc" in config.tasks and config.mc_source == "mc_task":
            lacking = [q.id for q in self.questions if not q.mc1_targets]
            if lacking:
                raise ValueError(
                    f"{len(lacking)} questions (first: {lacking[0]}) have no mc_task.json "
                    "targets; load a folder with mc_task.json or use --mc-source csv"
                )
        self.folds_splits = authors_folds(
            order, n_folds=config.n_folds, val_fraction=config.val_fraction, seed=config.seed
        )
        self.fmt = load_prompt_format(config.primer, config.instruction)
        self.model = model if model is not None else load_model(config.model)
        shape = model_shape(self.model)
        n_heads = shape.n_layers * shape.n_heads
        if config.top_k > n_heads:
            raise ValueError(f"top_k {config.top_k} is more than the model's {n_heads} heads")
        if config.caa_layer is not None and config.caa_layer >= shape.n_layers:
            raise ValueError(
                f"caa_layer {config.caa_layer} is not a layer of this model "
                f"(0..{shape.n_layers - 1})"
            )
        self.records = storage.JsonlLog(self.out / storage.RECORDS, record_key)
        self.judgements = storage.JsonlLog(self.out / storage.JUDGEMENTS, judgement_key)

    def _check_config(self) -> None:
        path = self.out / storage.RUN_CONFIG
        wanted = self.config.to_dict()
        if path.is_file():
            # settings added after the run was started take their defaults
            data = storage.read_json(path, "a run's settings")
            existing = ExperimentConfig.from_dict(data).to_dict()
            if existing != wanted:
                changed = sorted(k for k in wanted if existing.get(k) != wanted[k])
                raise ValueError(
                    f"{self.out} holds a run with other settings ({', '.join(changed)}); "
                    "use another --out or the same settings to resume it"
                )
        else:
            storage.write_json(path, wanted)

    # ----------------------------------------------------------------------- anchoring

    @property
    def caa_layer(self) -> int:
        layer = self.config.caa_layer
        return self.model.cfg.n_layers // 2 if layer is None else layer

    def _activations(self) -> AnchoringActivations:
        """Probing, tuning (and residual) activations of every question, in file order.

        File order and ``tuning_seed`` are those of ``fasb-lens collect``, so the folders
        it writes can be copied into ``activations/`` instead of being computed again.
        """
        questions = sorted(self.questions, key=lambda question: question.id)
        probing, tuning = truthfulqa_prompts(questions, tuning_seed=self.config.tuning_seed)
        return collect_anchoring_activations(
            self.model,
            probing,
            tuning,
            residual_layer=self.caa_layer if "caa" in self.config.methods else None,
            out_dir=self.activations_dir,
            progress=self.progress,
        )

    def anchor(self) -> list[_Fold]:
        """Probes, anchored heads, steering (and CAA) vectors for every fold."""
        activations = self._activations()
        config = self.config
        folds = []
        for split in map(self._subsample, self.folds_splits):
            anchoring = fit_anchoring(
                activations,
                split,
                top_k=config.top_k,
                direction=config.direction,  # type: ignore[arg-type]
                seed=config.seed,
                defaults=PolicyDefaults(config.alpha, config.threshold, config.backtrack_tokens),
                progress=False,
            )
            folder = fold_folder(self.out, split.fold)
            anchoring.save(folder)
            calibration = (
                self._calibration(split, anchoring.steering, anchoring.caa, folder)
                if config.calibrate
                else None
            )
            policies = self._policies(anchoring.caa, calibration)
            folds.append(_Fold(split, anchoring.steering, policies, calibration))
        return folds

    def _subsample(self, split: Split) -> Split:
        """The split with only ``train_fraction`` of its training questions (seeded).

        Validation and test questions stay whole, so runs with different fractions are
        scored on the same questions: the paper's data-efficiency study.
        """
        fraction = self.config.train_fraction
        if fraction == 1.0:
            return split
        generator = torch.Generator().manual_seed(self.config.seed + split.fold)
        keep = max(1, round(fraction * len(split.train)))
        chosen = sorted(torch.randperm(len(split.train), generator=generator)[:keep].tolist())
        return replace(split, train=tuple(split.train[i] for i in chosen))

    def _calibration(
        self, split: Split, steering: Steering, caa: CAAVector | None, folder: Path
    ) -> Calibration:
        """The fold's threshold and strengths, chosen on its validation questions."""
        if (folder / storage.CALIBRATION).is_file():
            return Calibration.load(folder)
        val = set(split.val)
        config = self.config
        calibration = calibrate(
            self.model,
            [q for q in self.questions if q.id in val],
            steering,
            fmt=self.fmt,
            backtrack_tokens=config.backtrack_tokens,
            fallback_threshold=config.threshold,
            tasks=config.tasks,
            sweep_questions=config.calibration_questions,
            judge=config.calibration_judge,
            max_new_tokens=config.max_new_tokens,
            mc_source=config.mc_source,
            batch_size=config.batch_size,
            caa=caa,
            progress=self.progress,
        )
        calibration.save(folder)
        return calibration

    def _policies(
        self, caa: CAAVector | None, calibration: Calibration | None
    ) -> dict[str, dict[str, Policy]]:
        """Each task's policies; strengths and threshold from the calibration if any."""
        config = self.config
        threshold = calibration.threshold if calibration is not None else config.threshold
        fixed = config.alpha if config.fixed_alpha is None else config.fixed_alpha
        defaults = {"caa": config.caa_alpha, "fixed": fixed}

        def strength(task: str, name: str) -> float:
            chosen = calibration.strength(task, name) if calibration is not None else None
            family = policy_spec(name).family
            return chosen if chosen is not None else defaults.get(family, config.alpha)

        return {
            task: {
                name: make_policy(
                    name,
                    alpha=strength(task, name),
                    threshold=threshold,
                    backtrack_tokens=config.backtrack_tokens,
                    caa=caa,
                )
                for name in config.methods
            }
            for task in TASKS
        }

    # ----------------------------------------------------------------------- evaluation

    def _test_questions(self, fold: _Fold) -> list[TruthfulQAQuestion]:
        test = set(fold.split.test)
        return [question for question in self.questions if question.id in test]

    def evaluate_mc(self, fold: _Fold) -> None:
        questions = self._test_questions(fold)
        bar = tqdm(
            questions, desc=f"MC fold {fold.split.fold}", unit="question", disable=not self.progress
        )
        for question in bar:
            missing = {
                name: policy
                for name, policy in fold.policies["mc"].items()
                if (fold.split.fold, question.id, "mc", name) not in self.records
            }
            if not missing:
                continue
            scored = evaluate_mc(
                self.model,
                question,
                missing,
                fmt=self.fmt,
                steering=fold.steering,
                source=self.config.mc_source,
            )
            for name, result in scored.items():
                self.records.append(
                    {
                        "fold": fold.split.fold,
                        "question_id": question.id,
                        "task": "mc",
                        "method": name,
                        **result,
                    }
                )

    def evaluate_generation(self, fold: _Fold) -> None:
        config = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens, stop_strings=(QA_STOP,)
        )
        questions = self._test_questions(fold)
        policies = fold.policies["generation"]
        total = len(questions) * len(policies)
        bar = tqdm(
            total=total,
            desc=f"generation fold {fold.split.fold}",
            unit="answer",
            disable=not self.progress,
        )
        size = self.config.batch_size
        for start in range(0, len(questions), size):
            batch = questions[start : start + size]
            prompts = [self.fmt.generation_prompt(q.question) for q in batch]
            shared = None  # the prompts' cache, built once and shared by every method
            for name, policy in policies.items():
                todo = [
                    i
                    for i, q in enumerate(batch)
                    if (fold.split.fold, q.id, "generation", name) not in self.records
                ]
                bar.update(len(batch) - len(todo))
                if not todo:
                    continue
                if len(todo) == len(batch) and shared is None:
                    shared = PromptCache.build(self.model, prompts)
                traces = generate(
                    self.model,
                    [prompts[i] for i in todo],
                    policy=policy,
                    steering=fold.steering,
                    config=config,
                    prompt_cache=shared if len(todo) == len(batch) else None,
                )
                for i, trace in zip(todo, traces, strict=True):
                    self.records.append(generation_record(fold.split.fold, batch[i], name, trace))
                bar.update(len(todo))
        bar.close()

    def judge(self) -> None:
        generations = [r for r in self.records.values() if r["task"] == "generation"]
        by_id = {question.id: question for question in self.questions}
        for name in self.config.judges:
            todo = [
                r
                for r in generations
                if (r["fold"], r["question_id"], r["method"], name) not in self.judgements
            ]
            if not todo:
                continue
            judge = judge_by_name(name)
            for start in tqdm(
                range(0, len(todo), 64), desc=f"judge {name}", disable=not self.progress
            ):
                chunk = todo[start : start + 64]
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
                    self.judgements.append(
                        {
                            "fold": record["fold"],
                            "question_id": record["question_id"],
                            "method": record["method"],
                            "judge": name,
                            **asdict(verdict),
                        }
                    )

    def run(self) -> dict[str, Any]:
        """Anchor, evaluate every fold, judge, and write the summary; returns it.

        Multiple choice runs on every fold before generation, so the quick table is whole
        early and a run stopped during generation still has it.
        """
        folds = self.anchor()
        if "mc" in self.config.tasks:
            for fold in folds:
                self.evaluate_mc(fold)
        if "generation" in self.config.tasks:
            for fold in folds:
                self.evaluate_generation(fold)
        return self.summarize()

    def summarize(self) -> dict[str, Any]:
        """Judge the answers recorded so far and write the summary; evaluates nothing new.

        On a run that was interrupted (or is still going) this gives the table of what is
        done; ``n_mc`` and ``n_generation`` in ``results.json`` say how many questions each
        number rests on, and fold means skip folds without results.
        """
        if "generation" in self.config.tasks:
            self.judge()
        calibrations = {}
        for split in self.folds_splits:
            folder = fold_folder(self.out, split.fold)
            if (folder / storage.CALIBRATION).is_file():
                calibration = Calibration.load(folder)
                calibrations[str(split.fold)] = {
                    "threshold": calibration.threshold,
                    "strengths": calibration.strengths,
                    "youden_j": calibration.youden_j,
                }
        records, judgements = self.records.values(), self.judgements.values()
        return write_summary(self.out, self.config, records, judgements, calibrations)


def generation_record(
    fold: int, question: TruthfulQAQuestion, method: str, trace: GenerationTrace
) -> dict[str, Any]:
    """A generation record: the answer, whether it triggered, and the whole trace (but the
    prompt, which the run's settings rebuild)."""
    return {
        "fold": fold,
        "question_id": question.id,
        "task": "generation",
        "method": method,
        "answer": trace.answer,
        "triggered": trace.triggered,
        "trace": trace.to_dict(prompt=False),
    }


def record_trace(record: dict[str, Any]) -> GenerationTrace:
    """The :class:`GenerationTrace` stored in a generation record."""
    return GenerationTrace.from_dict(record["trace"])


def load_run(out: str | Path) -> tuple[ExperimentConfig, list[dict], list[dict]]:
    """A run directory's config, records and judgements (for notebooks and figures)."""
    out = Path(out)
    data = storage.read_json(out / storage.RUN_CONFIG, "the settings of a `reproduce` run")
    config = ExperimentConfig.from_dict(data)
    records = storage.JsonlLog(out / storage.RECORDS, record_key).values()
    judgements = storage.JsonlLog(out / storage.JUDGEMENTS, judgement_key).values()
    return config, records, judgements


def load_fold_artifacts(out: str | Path, fold: int) -> tuple[HeadProbes, Steering]:
    """A fold's probes and steering."""
    folder = fold_folder(out, fold)
    return HeadProbes.load(folder), Steering.load(folder)
