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
  command resumes where it stopped;
* ``judgements.jsonl`` - one line per (fold, question, method, judge);
* ``results.json``, ``results.csv``, ``answers.csv`` and ``table.md`` - the summary.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.activations import (
    HeadActivations,
    collect_head_activations,
    collect_residual_activations,
)
from fasb_lens.data import (
    PROBE_TEMPLATE,
    TUNING_TEMPLATE,
    PromptFormat,
    TruthfulQAQuestion,
    load_prompt_format,
    load_questions,
    probing_prompts,
    tuning_prompts,
)
from fasb_lens.evaluation.calibration import CALIBRATION_NAME, Calibration, calibrate
from fasb_lens.evaluation.judges import JUDGES, JudgeInput, Verdict, judge_by_name, summarize
from fasb_lens.evaluation.truthfulqa import AnswerSource, evaluate_mc
from fasb_lens.generation import (
    POLICY_NAMES,
    QA_STOP,
    GenerationConfig,
    GenerationTrace,
    Policy,
    PromptCache,
    generate,
    make_policy,
)
from fasb_lens.models import load_model
from fasb_lens.probes import HeadProbes, fit_head_probes
from fasb_lens.splits import Split, authors_folds, authors_question_order
from fasb_lens.steering import (
    PolicyDefaults,
    ResidualSteering,
    Steering,
    build_caa,
    build_steering,
)

logger = logging.getLogger(__name__)

DEFAULT_METHODS = (
    "none",
    "fixed",
    "caa",
    "fasb",
    "fasb_fixed_strength",
    "fasb_no_backtrack",
    "after_question",
)
DEFAULT_JUDGES = ("bleu-acc", "rouge-l-acc", "embedding-acc", "info-check")
INFO_JUDGES = ("info-check", "allenai-info")
TASKS = ("mc", "generation")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; saved as ``config.json`` next to its results."""

    data: str
    n_questions: int | None = None
    mc_task: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    judges: tuple[str, ...] = DEFAULT_JUDGES
    tasks: tuple[str, ...] = TASKS
    model: str | None = None
    n_folds: int = 2
    val_fraction: float = 0.2
    train_fraction: float = 1.0
    seed: int = 42
    top_k: int = 24
    direction: str = "probe"
    alpha: float = 60.0
    threshold: float = 0.6
    backtrack_tokens: int = 10
    fixed_alpha: float | None = None
    caa_alpha: float = 5.0
    caa_layer: int | None = None
    max_new_tokens: int = 50
    mc_source: AnswerSource = "mc_task"
    primer: str | None = None
    instruction: str | None = None
    batch_size: int = 8
    tuning_seed: int = 0
    calibrate: bool = True
    calibration_questions: int = 32
    calibration_judge: str = "embedding-acc"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in POLICY_NAMES]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(POLICY_NAMES)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
        if not self.methods:
            raise ValueError("no methods to evaluate")
        if self.n_questions is not None and self.n_questions < 2 * self.n_folds:
            raise ValueError(
                f"--questions must be at least {2 * self.n_folds} for {self.n_folds} folds"
            )
        unknown = [name for name in self.judges if name not in JUDGES]
        if unknown:
            raise ValueError(f"unknown judge(s) {unknown}; known: {', '.join(JUDGES)}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        for path in (self.primer, self.instruction, self.mc_task):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path} does not exist")

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


# --------------------------------------------------------------------------- records


class RecordLog:
    """An append-only JSON-lines file that survives being killed mid-run.

    Each record is written with one ``write`` of a whole line, then flushed and synced.
    On reading, a torn last line (a run killed while writing it) is dropped.
    """

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], tuple]) -> None:
        self.path = path
        self.key = key
        self.records: dict[tuple, dict[str, Any]] = {}
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            valid = 0
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.records[key(record)] = record
                valid += len(line.encode()) + 1
            if valid != path.stat().st_size:
                logger.warning("%s: dropping a torn last line left by an interrupted run", path)
                with path.open("r+b") as handle:
                    handle.truncate(valid)

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.records[self.key(record)] = record

    def values(self) -> Iterable[dict[str, Any]]:
        return self.records.values()


def _record_key(record: dict[str, Any]) -> tuple:
    return (record["fold"], record["question_id"], record["task"], record["method"])


def _judgement_key(record: dict[str, Any]) -> tuple:
    return (record["fold"], record["question_id"], record["method"], record["judge"])


# --------------------------------------------------------------------------- the run


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
        self.out.mkdir(parents=True, exist_ok=True)
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
        self.fmt: PromptFormat = load_prompt_format(config.primer, config.instruction)
        self.model = model if model is not None else load_model(config.model)
        self.records = RecordLog(self.out / "records.jsonl", _record_key)
        self.judgements = RecordLog(self.out / "judgements.jsonl", _judgement_key)

    def _check_config(self) -> None:
        path = self.out / "config.json"
        wanted = self.config.to_dict()
        if path.is_file():
            # settings added after the run was started take their defaults
            existing = ExperimentConfig.from_dict(json.loads(path.read_text())).to_dict()
            if existing != wanted:
                changed = sorted(k for k in wanted if existing.get(k) != wanted[k])
                raise ValueError(
                    f"{self.out} holds a run with other settings ({', '.join(changed)}); "
                    "use another --out or the same settings to resume it"
                )
        else:
            path.write_text(json.dumps(wanted, indent=1))

    # ----------------------------------------------------------------------- anchoring

    def _activations(self) -> tuple[HeadActivations, HeadActivations, HeadActivations | None]:
        """Probing, tuning (and residual) activations of every question, in file order.

        File order and ``tuning_seed`` are those of ``fasb-lens collect``, so the folders
        it writes can be copied into ``activations/`` instead of being computed again.
        """
        folder = self.activations_dir
        questions = sorted(self.questions, key=lambda question: question.id)
        probing_set = probing_prompts(questions)
        kwargs = {"batch_size": 32, "progress": self.progress}
        probing = collect_head_activations(
            self.model, probing_set, template=PROBE_TEMPLATE, out_dir=folder / "probing", **kwargs
        )
        tuning = collect_head_activations(
            self.model,
            tuning_prompts(questions, seed=self.config.tuning_seed),
            template=TUNING_TEMPLATE,
            out_dir=folder / "tuning",
            **kwargs,
        )
        residual = None
        if "caa" in self.config.methods:
            residual = collect_residual_activations(
                self.model,
                probing_set,
                layers=[self.caa_layer],
                template=PROBE_TEMPLATE,
                out_dir=folder / "residual",
                **kwargs,
            )
        return probing, tuning, residual

    @property
    def caa_layer(self) -> int:
        layer = self.config.caa_layer
        return self.model.cfg.n_layers // 2 if layer is None else layer

    def anchor(self) -> list[_Fold]:
        """Probes, anchored heads, steering (and CAA) vectors for every fold."""
        probing, tuning, residual = self._activations()
        config = self.config
        folds = []
        for split in map(self._subsample, self.folds_splits):
            folder = self.out / "folds" / f"fold{split.fold}"
            probes = fit_head_probes(probing, split=split, progress=False)
            steering = build_steering(
                probes,
                probing,
                tuning,
                top_k=config.top_k,
                direction=config.direction,
                seed=config.seed,
                split=split.to_dict(),
                defaults=PolicyDefaults(config.alpha, config.threshold, config.backtrack_tokens),
            )
            probes.save(folder)
            steering.save(folder)
            caa = None
            if residual is not None:
                rows = torch.cat([probes.train_idx, probes.val_idx])
                caa = build_caa(residual, self.caa_layer, rows)
                caa.save(folder)
            calibration = (
                self._calibration(split, steering, caa, folder) if config.calibrate else None
            )
            folds.append(_Fold(split, steering, self._policies(caa, calibration), calibration))
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
        self, split: Split, steering: Steering, caa: ResidualSteering | None, folder: Path
    ) -> Calibration:
        """The fold's threshold and strengths, chosen on its validation questions."""
        if (folder / CALIBRATION_NAME).is_file():
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
        self, caa: ResidualSteering | None, calibration: Calibration | None
    ) -> dict[str, dict[str, Policy]]:
        """Each task's policies; strengths and threshold from the calibration if any."""
        config = self.config
        threshold = calibration.threshold if calibration is not None else config.threshold
        fixed = config.alpha if config.fixed_alpha is None else config.fixed_alpha
        defaults = {"caa": config.caa_alpha, "fixed": fixed}

        def strength(task: str, name: str) -> float:
            chosen = calibration.strength(task, name) if calibration is not None else None
            return chosen if chosen is not None else defaults.get(name, config.alpha)

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
                    self.records.append(_generation_record(fold, batch[i], name, trace))
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
            folder = self.out / "folds" / f"fold{split.fold}"
            if (folder / CALIBRATION_NAME).is_file():
                calibration = Calibration.load(folder)
                calibrations[str(split.fold)] = {
                    "threshold": calibration.threshold,
                    "strengths": calibration.strengths,
                    "youden_j": calibration.youden_j,
                }
        records, judgements = self.records.values(), self.judgements.values()
        return write_summary(self.out, self.config, records, judgements, calibrations)


def _generation_record(
    fold: _Fold, question: TruthfulQAQuestion, method: str, trace: GenerationTrace
) -> dict[str, Any]:
    return {
        "fold": fold.split.fold,
        "question_id": question.id,
        "task": "generation",
        "method": method,
        "answer": trace.answer,
        "text": trace.text,
        "output_ids": trace.output_ids,
        "triggered": trace.triggered,
        "trigger_step": trace.trigger_step,
        "trigger_p_true": trace.trigger_p_true,
        "strength": trace.strength,
        "discarded_text": trace.discarded_text,
        "p_true": trace.p_true,
        "kept": [step.kept for step in trace.steps],
        "tokens": [step.token for step in trace.steps],
        "stop_reason": trace.stop_reason,
    }


# --------------------------------------------------------------------------- summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _mean_of_present(values: list[float]) -> float:
    """The mean of the values that are numbers (a fold with no results gives NaN)."""
    return _mean([v for v in values if not (isinstance(v, float) and math.isnan(v))])


def summarize_records(
    config: ExperimentConfig,
    records: Iterable[dict[str, Any]],
    judgements: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    """Per method: MC metrics and each judge pair's True/Info/TruexInfo, per fold and mean."""
    records, judgements = list(records), list(judgements)
    folds = sorted({r["fold"] for r in records})
    verdicts: dict[tuple, list[Verdict]] = defaultdict(list)
    for j in judgements:
        verdict = Verdict(
            j["judge"], j["truthful"], j["informative"], j.get("score"), j.get("error")
        )
        verdicts[(j["method"], j["fold"], j["judge"])].append(verdict)
    judged = config.judges if "generation" in config.tasks else ()
    truth_judges = [name for name in judged if name not in INFO_JUDGES]
    info_judges = [name for name in judged if name in INFO_JUDGES]
    summary: dict[str, Any] = {"folds": folds, "methods": {}}
    for method in config.methods:
        entry: dict[str, Any] = {"per_fold": {}}
        for fold in folds:
            per: dict[str, Any] = {}
            mc = [r for r in records if (r["method"], r["fold"], r["task"]) == (method, fold, "mc")]
            for metric in ("mc1", "mc2", "mc3"):
                per[metric] = _mean([r[metric] for r in mc])
            per["n_mc"] = len(mc)
            gen = [
                r
                for r in records
                if (r["method"], r["fold"], r["task"]) == (method, fold, "generation")
            ]
            per["n_generation"] = len(gen)
            per["triggered"] = _mean([float(r["triggered"]) for r in gen])
            for truth in truth_judges:
                for info in info_judges:
                    pair = summarize(
                        verdicts[(method, fold, truth)], verdicts[(method, fold, info)]
                    )
                    per[f"{truth} x {info}"] = pair
            entry["per_fold"][str(fold)] = per
        entry["mean"] = _fold_mean(entry["per_fold"])
        summary["methods"][method] = entry
    return summary


def _fold_mean(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean over folds of every number (judge pairs field by field; counts summed)."""
    mean: dict[str, Any] = {}
    folds = list(per_fold.values())
    if not folds:
        return mean
    for key, value in folds[0].items():
        if isinstance(value, dict):
            mean[key] = {
                field_: _mean_of_present([f[key][field_] for f in folds])
                if isinstance(value[field_], int | float)
                else value[field_]
                for field_ in value
            }
        elif key.startswith("n_"):
            mean[key] = sum(f[key] for f in folds)
        else:
            mean[key] = _mean_of_present([f[key] for f in folds])
    return mean


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a table like the paper's Table 1 (fold means, in percent)."""
    methods = summary["methods"]
    pairs = sorted(
        {k for m in methods.values() for k, v in m["mean"].items() if isinstance(v, dict)}
    )
    head = ["Method", "MC1", "MC2", "MC3", "triggered"]
    for pair in pairs:
        head += [f"True ({pair})", "Info", "True*Info"]
    head.append("n (MC / gen.)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(value: float) -> str:
        return (
            "-"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else f"{100 * value:.1f}"
        )

    for name, entry in methods.items():
        mean = entry["mean"]
        row = [name] + [pct(mean.get(k, math.nan)) for k in ("mc1", "mc2", "mc3", "triggered")]
        for pair in pairs:
            values = mean.get(pair, {})
            row += [
                pct(values.get("true", math.nan)),
                pct(values.get("info", math.nan)),
                pct(values.get("true_x_info", math.nan)),
            ]
        row.append(f"{mean.get('n_mc', 0)} / {mean.get('n_generation', 0)}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    out: Path,
    config: ExperimentConfig,
    records: Iterable[dict[str, Any]],
    judgements: Iterable[dict[str, Any]],
    calibrations: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write results.json, results.csv, answers.csv and table.md; return the summary."""
    records = list(records)
    summary = summarize_records(config, records, judgements)
    summary["calibration"] = calibrations or {}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(markdown_table(summary))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "fold", "metric", "value"])
        for method, entry in summary["methods"].items():
            for fold, values in [*entry["per_fold"].items(), ("mean", entry["mean"])]:
                for metric, value in values.items():
                    if isinstance(value, dict):
                        for sub in ("true", "info", "true_x_info"):
                            writer.writerow([method, fold, f"{metric}: {sub}", value.get(sub)])
                    else:
                        writer.writerow([method, fold, metric, value])
    with (out / "answers.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "fold",
                "question_id",
                "method",
                "set",
                "answer",
                "label",
                "log_prob",
                "triggered",
                "trigger_token",
                "p_true",
                "strength",
            ]
        )
        for record in records:
            if record["task"] != "mc":
                continue
            for row in record["answers"]:
                writer.writerow(
                    [
                        record["fold"],
                        record["question_id"],
                        record["method"],
                        row["set"],
                        row["answer"],
                        row["label"],
                        row["log_prob"],
                        row["triggered"],
                        row["trigger_token"],
                        row["p_true"],
                        row["strength"],
                    ]
                )
    return summary


def write_fraction_sweep(out: Path, summaries: dict[float, dict[str, Any]]) -> str:
    """The data-efficiency sweep: ``train_fraction.csv`` and ``.md``; returns the table.

    One row per (fraction, method) with the fold means of MC1/MC2/MC3 and of True*Info
    for every judge pair of the runs.
    """
    pairs = sorted(
        {
            key
            for summary in summaries.values()
            for entry in summary["methods"].values()
            for key, value in entry["mean"].items()
            if isinstance(value, dict)
        }
    )
    head = ["train_fraction", "method", "mc1", "mc2", "mc3"] + [f"{p}: true_x_info" for p in pairs]
    rows = []
    for fraction, summary in summaries.items():
        for method, entry in summary["methods"].items():
            mean = entry["mean"]
            rows.append(
                [fraction, method]
                + [mean.get(k, math.nan) for k in ("mc1", "mc2", "mc3")]
                + [mean.get(p, {}).get("true_x_info", math.nan) for p in pairs]
            )
    with (out / "train_fraction.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(head)
        writer.writerows(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row[0]:g}", row[1]] + [f"{100 * v:.1f}" for v in row[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (out / "train_fraction.md").write_text(table)
    return table


def load_run(out: str | Path) -> tuple[ExperimentConfig, list[dict], list[dict]]:
    """A run directory's config, records and judgements (for notebooks and figures)."""
    out = Path(out)
    config = ExperimentConfig.from_dict(json.loads((out / "config.json").read_text()))
    records = list(RecordLog(out / "records.jsonl", _record_key).values())
    judgements = list(RecordLog(out / "judgements.jsonl", _judgement_key).values())
    return config, records, judgements


def load_fold_artifacts(out: str | Path, fold: int) -> tuple[HeadProbes, Steering]:
    folder = Path(out) / "folds" / f"fold{fold}"
    return HeadProbes.load(folder), Steering.load(folder)


# --------------------------------------------------------------------------- six MC datasets

MC_DATASET_FILES = {
    "copa": "copa/copa-test.xml",
    "nli": "snli/test.tsv",
    "mmlu": "mmlu",
    "sst2": "sst2/stsa.binary.test",
    "winogrande": "winogrande/dev.jsonl",
}
"""Where each dataset lies in the shared data folder (Story Cloze is supplied by the user)."""


def _dataset_key(record: dict[str, Any]) -> tuple:
    return (record["dataset"], record["item_id"], record["policy"])


def run_mc_datasets(
    data_dir: str | Path,
    out: str | Path,
    *,
    datasets: Iterable[str],
    policies: dict[str, Policy],
    model: TransformerBridge | None = None,
    story_cloze: str | Path | None = None,
    limit: int | None = 400,
    top_k: int = 24,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Held-out accuracy of each policy on each multiple-choice dataset, resumable.

    Records go to ``out/mc_datasets.jsonl`` as they come; the summary to
    ``out/mc_datasets.json`` and ``out/mc_datasets.md``.
    """
    from fasb_lens.data.multiple_choice import load_multiple_choice
    from fasb_lens.evaluation.mc_datasets import evaluate_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else load_model()
    log = RecordLog(out / "mc_datasets.jsonl", _dataset_key)
    results = {}
    for name in datasets:
        if name == "story_cloze":
            if story_cloze is None:
                raise ValueError("story_cloze needs --story-cloze FILE (it is not shipped)")
            path = Path(story_cloze)
        elif name in MC_DATASET_FILES:
            path = Path(data_dir) / MC_DATASET_FILES[name]
        else:
            known = ", ".join([*MC_DATASET_FILES, "story_cloze"])
            raise ValueError(f"unknown dataset {name!r}; known: {known}")
        items = load_multiple_choice(name, path)
        done = {(r["item_id"], r["policy"]): r for r in log.values() if r["dataset"] == name}
        results[name] = evaluate_dataset(
            model,
            items,
            policies=policies,
            top_k=top_k,
            seed=seed,
            limit=limit,
            progress=progress,
            on_item=log.append,
            done=done,
        )
    (out / "mc_datasets.json").write_text(json.dumps(results, indent=1))
    (out / "mc_datasets.md").write_text(_datasets_table(results, list(policies)))
    return results


def _datasets_table(results: dict[str, dict[str, Any]], policies: list[str]) -> str:
    lines = [
        "| Dataset | n test | " + " | ".join(policies) + " |",
        "|" + "---|" * (len(policies) + 2),
    ]
    for name, result in results.items():
        cells = [f"{100 * result['accuracy'][p]:.1f}" for p in policies]
        lines.append(f"| {name} | {result['n_test']} | " + " | ".join(cells) + " |")
    if results:
        means = [
            f"{100 * sum(r['accuracy'][p] for r in results.values()) / len(results):.1f}"
            for p in policies
        ]
        lines.append("| average | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
