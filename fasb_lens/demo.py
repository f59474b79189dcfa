"""The offline walk-through behind ``fasb-lens demo``: the whole method in a few minutes.

On the embedded model and the built-in mini set: split the questions (train /
validation / test), collect head activations of the probing and tuning prompts, fit a
probe per head, anchor the best heads and build their steering vectors, choose the
threshold from unsteered answers to the validation questions, then answer three test
questions with and without FASB. :func:`run_demo` returns everything it computed and
writes the figures; the command line prints the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasb_lens.anchoring import anchor_heads
from fasb_lens.data import load_mini_truthfulqa, load_prompt_format
from fasb_lens.evaluation.calibration import Calibration, CalibrationInputs, calibrate
from fasb_lens.generation import QA_STOP, GenerationConfig, GenerationTrace, generate
from fasb_lens.models import load_model
from fasb_lens.plotting import (
    head_heatmap,
    p_true_distributions,
    save_figure,
    steering_heads,
    trajectories,
)
from fasb_lens.policies import FASB
from fasb_lens.probes import HeadProbes
from fasb_lens.splits import authors_folds
from fasb_lens.steering import Steering

DEMO_QUESTIONS = 3


@dataclass
class DemoResult:
    """What the demo computed, for the report and for notebooks."""

    probes: HeadProbes
    steering: Steering
    calibration: Calibration
    questions: list[str]
    plain: list[GenerationTrace]
    steered: list[GenerationTrace]
    figures: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(
    out: str | Path,
    *,
    top_k: int = 12,
    alpha: float = 60.0,
    backtrack_tokens: int = 10,
    png: bool = True,
    progress: bool = True,
    model: Any = None,
) -> DemoResult:
    """Run the demo; figures go to ``out``.

    ``alpha`` is not calibrated here (``fasb-lens reproduce`` does that): 60, the paper's
    value, gives SmolLM2's answers a visible push at FASB's adaptive strength.
    """
    import time

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    model = model if model is not None else load_model()
    lap("load model")
    questions = load_mini_truthfulqa()
    split = authors_folds([q.id for q in questions], n_folds=5, seed=42)[0]
    anchoring = anchor_heads(model, questions, split, top_k=top_k, progress=progress)
    probing, probes, steering = anchoring.activations, anchoring.probes, anchoring.steering
    lap("anchor heads: activations, probes, steering")
    fmt = load_prompt_format()
    by_id = {q.id: q for q in questions}
    calibration, _ = calibrate(
        CalibrationInputs(
            model,
            [by_id[i] for i in split.val],
            steering,
            fmt=fmt,
            backtrack_tokens=backtrack_tokens,
            mc_source="csv",
            progress=progress,
        ),
        tasks=(),
    )
    threshold = calibration.thresholds["generation"]
    lap("choose the threshold")
    test = [by_id[i] for i in split.test[:DEMO_QUESTIONS]]
    prompts = [fmt.generation_prompt(q.question) for q in test]
    config = GenerationConfig(max_new_tokens=50, stop_strings=(QA_STOP,))
    plain = generate(model, prompts, steering=steering, config=config)
    policy = FASB(alpha, threshold, backtrack_tokens, tracker=calibration.tracker)
    steered = generate(model, prompts, steering=steering, policy=policy, config=config)
    lap("answer with and without FASB")

    out = Path(out)
    figures = []
    figures += save_figure(
        head_heatmap(
            probes.val_accuracy,
            anchored=steering.heads,
            extra={"training accuracy": probes.train_accuracy},
        ),
        out / "heads_accuracy",
        png=png,
    )
    figures += save_figure(steering_heads(steering, probing), out / "anchored_heads", png=png)
    readings = calibration.readings[calibration.tracker]
    figures += save_figure(
        p_true_distributions(readings["question"], readings["first_check"], threshold=threshold),
        out / "p_true_distributions",
        png=png,
    )
    figures += save_figure(
        trajectories(
            steered,
            unsteered=plain,
            labels=[q.question for q in test],
            threshold=threshold,
        ),
        out / "trajectories",
        png=png,
    )
    anchoring.save(out / "artifact")
    lap("figures")
    return DemoResult(
        probes, steering, calibration, [q.question for q in test], plain, steered, figures, timings
    )
