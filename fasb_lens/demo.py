"""The offline walk-through behind ``fasb-lens demo``: the whole method in a few minutes.

On the embedded model (or the one ``--model`` names) and the built-in mini set: split
the questions (train / validation / test), collect head activations of the probing and
tuning prompts, fit a probe per head, anchor the best heads and build their steering
vectors, choose the threshold from unsteered answers to the validation questions and
FASB's and ITI's strengths from steered ones (the paper's alpha = 60 breaks this small
model's language), then answer test questions without steering, with ITI and with FASB,
each answer judged truthful or not against the question's references. :func:`run_demo`
returns everything it computed and writes the figures; the command line prints the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasb_lens.anchoring import AnchoringSettings, anchor_heads
from fasb_lens.data import load_mini_truthfulqa, truthfulqa_prompt_format
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.judges import JudgeInput, judge_by_name
from fasb_lens.evaluation.truthfulqa_calibration import CalibrationInputs, calibrate_fold
from fasb_lens.generation import QA_STOP, GenerationConfig, GenerationTrace, generate
from fasb_lens.models import ModelOptions
from fasb_lens.options import AT_LEAST_ONE, option, same_option
from fasb_lens.plotting import (
    head_heatmap,
    p_true_distributions,
    save_figure,
    steering_heads,
    token_view,
    trajectories,
)
from fasb_lens.policies import FASB, ITI, PolicySettings, Unsteered
from fasb_lens.probes import HeadProbes
from fasb_lens.splits import authors_folds
from fasb_lens.steering import Steering


@dataclass(frozen=True)
class DemoSettings:
    """The demo's settings (``fasb-lens demo`` options); every default is written once."""

    top_k: int = same_option(AnchoringSettings, "top_k", default=12, flags=("--top-k", "--top"))
    alpha: float | None = same_option(
        PolicySettings,
        "alpha",
        default=None,
        help="FASB's and ITI's strength (default: each calibrated on the validation "
        "questions' True x Info, as reproduce does)",
    )
    backtrack_tokens: int = same_option(PolicySettings, "backtrack_tokens")
    questions: int = option(4, help="held-out questions answered", bounds=AT_LEAST_ONE)
    model: ModelOptions = ModelOptions()


@dataclass
class DemoResult:
    """What the demo computed, for the report and for notebooks."""

    probes: HeadProbes
    steering: Steering
    calibration: Calibration
    questions: list[str]
    plain: list[GenerationTrace]
    steered: list[GenerationTrace]
    strengths: dict[str, float] = field(default_factory=dict)
    """The strength each policy answered at (``"fixed"``: ITI, ``"fasb"``)."""
    iti: list[GenerationTrace] = field(default_factory=list)
    truthful: dict[str, list[bool | None]] = field(default_factory=dict)
    """Per policy (``"none"``, ``"fixed"``, ``"fasb"``), each answer's verdict from the
    calibration's truth judge (``None``: it could not judge)."""
    figures: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(
    out: str | Path,
    settings: DemoSettings | None = None,
    *,
    png: bool = True,
    progress: bool = True,
    model: Any = None,
) -> DemoResult:
    """Run the demo; figures go to ``out``.

    Without ``settings.alpha`` the strengths are calibrated on the validation questions'
    generations (True x Info, the search of ``fasb-lens reproduce``); with it, both
    policies steer at that strength.
    """
    settings = settings or DemoSettings()
    top_k, backtrack_tokens = settings.top_k, settings.backtrack_tokens
    import time

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    model = model if model is not None else settings.model.load()
    lap("load model")
    questions = load_mini_truthfulqa()
    split = authors_folds([q.id for q in questions], n_folds=5, seed=42)[0]
    anchoring = anchor_heads(model, questions, split, top_k=top_k, progress=progress)
    probing, probes, steering = anchoring.activations, anchoring.probes, anchoring.steering
    lap("anchor heads: activations, probes, steering")
    fmt = truthfulqa_prompt_format("mini")  # the mini set: fasb_lens' own prompt
    by_id = {q.id: q for q in questions}
    calibration, _ = calibrate_fold(
        CalibrationInputs(
            model,
            [by_id[i] for i in split.val],
            steering,
            fmt=fmt,
            settings=PolicySettings(alpha=settings.alpha or 0.0, backtrack_tokens=backtrack_tokens),
            mc_source="csv",
            progress=progress,
            policies=("fixed", "fasb"),
        ),
        tasks=("generation",) if settings.alpha is None else (),
    )
    threshold = calibration.thresholds["generation"]
    calibrated = {name: calibration.strength("generation", name) for name in ("fixed", "fasb")}
    strengths = calibrated if settings.alpha is None else dict.fromkeys(calibrated, settings.alpha)
    lap("choose the threshold and strengths" if settings.alpha is None else "choose the threshold")
    test = [by_id[i] for i in split.test[: settings.questions]]
    fasb = FASB(strengths["fasb"], threshold, backtrack_tokens, tracker=calibration.tracker)
    plain_policy = Unsteered(tracker=calibration.tracker)
    policies = {"none": plain_policy, "fixed": ITI(strengths["fixed"]), "fasb": fasb}
    answers = _answer(model, test, fmt, steering, policies)
    truthful = _judged(judge_by_name(calibration.judge), test, answers)
    plain, iti, steered = answers["none"], answers["fixed"], answers["fasb"]
    lap("answer without steering, with ITI and with FASB")

    result = DemoResult(
        probes,
        steering,
        calibration,
        [q.question for q in test],
        plain,
        steered,
        strengths,  # type: ignore[arg-type]
        iti,
        truthful,
        [],
        timings,
    )
    result.figures = _figures(result, probing, Path(out), png)
    anchoring.save(Path(out) / "artifact")
    lap("figures")
    return result


def _answer(model, questions, fmt, steering, policies) -> dict[str, list[GenerationTrace]]:
    """Each question answered under each policy (greedy, 50 new tokens, up to "Q:")."""
    prompts = [fmt.generation_prompt(q.question) for q in questions]
    config = GenerationConfig(max_new_tokens=50, stop_strings=(QA_STOP,))
    return {
        name: generate(model, prompts, steering=steering, policy=policy, config=config)
        for name, policy in policies.items()
    }


def _judged(judge, questions, answers) -> dict[str, list[bool | None]]:
    """Each answer's verdict (truthful or not; ``None``: not judged), per policy."""
    return {
        name: [
            verdict.truthful
            for verdict in judge.judge_many(
                [
                    JudgeInput(q.question, trace.answer, q.correct_answers, q.incorrect_answers)
                    for q, trace in zip(questions, traces, strict=True)
                ]
            )
        ]
        for name, traces in answers.items()
    }


def _figures(result: DemoResult, probing: Any, out: Path, png: bool) -> list[Path]:
    """The demo's figures: probe accuracies, the anchored heads, the tracker's readings,
    the trajectories of the answers, and the first answer token by token."""
    probes, steering, calibration = result.probes, result.steering, result.calibration
    threshold = calibration.thresholds["generation"]
    readings = calibration.readings[calibration.tracker]
    figures = {
        "heads_accuracy": head_heatmap(
            probes.val_accuracy,
            anchored=steering.heads,
            extra={"training accuracy": probes.train_accuracy},
        ),
        "anchored_heads": steering_heads(steering, probing),
        "p_true_distributions": p_true_distributions(
            readings["question"], readings["first_check"], threshold=threshold
        ),
        "trajectories": trajectories(
            result.steered, unsteered=result.plain, labels=result.questions, threshold=threshold
        ),
        "token_view": token_view(
            result.steered[0],
            unsteered=result.plain[0],
            threshold=threshold,
            title=f'"{result.questions[0]}": FASB token by token, the unsteered answer above',
        ),
    }
    return [
        path
        for name, figure in figures.items()
        for path in save_figure(figure, out / name, png=png)
    ]
