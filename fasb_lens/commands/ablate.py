"""``fasb-lens ablate``: a per-head grid - exact ablations, attribution or activation patching."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasb_lens.commands._common import model_for, output_flags, output_folder, report
from fasb_lens.data.prompts import prompt_option
from fasb_lens.options import AT_LEAST_ONE, check_options, option

PATCHING = "patching"
"""The ``--estimator`` that runs activation patching (clean true answer into the false
one) instead of an ablation grid."""


def _metrics() -> tuple[str, ...]:
    from fasb_lens.ablation import METRICS

    return METRICS


@dataclass(frozen=True)
class AblateOptions:
    """What ``ablate`` measures and on which questions (how each head is edited is
    :class:`~fasb_lens.ablation.AblationSettings`; the model, ``ModelOptions``)."""

    metric: str = option("logprob_margin", help="what each edit is measured by", choices=_metrics)
    heads: str = option("all", help="the heads studied", choices=("all", "anchored"))
    data: str = option(
        "mini",
        help="TruthfulQA questions the metric uses: 'mini', a CSV or a folder",
        flags=("--truthfulqa", "--data"),
    )
    questions: int = option(20, help="questions used", bounds=AT_LEAST_ONE)
    prompt: str | None = prompt_option()

    def __post_init__(self) -> None:
        check_options(self)


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.ablation import ESTIMATORS, AblationSettings
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import add_options, same_option

    parser.add_argument("--artifact", required=True, help="folder written by `fit`")
    add_options(parser, AblationSettings, exclude=("estimator",))
    estimator = same_option(AblationSettings, "estimator")
    parser.add_argument(
        *estimator.metadata["flags"],
        dest="estimator",
        choices=[*ESTIMATORS, PATCHING],
        default=estimator.default,
        help=f"{estimator.metadata['help']}; {PATCHING}: activation patching (--metric p_true)",
    )
    add_options(parser, AblateOptions)
    add_options(parser, ModelOptions, defaults={"name": None})
    parser.add_argument(
        "--activations",
        help="folder written by `collect` (mean and resample ablation, steering each head)",
    )
    parser.add_argument("--out", required=True, help="output folder (resumes if interrupted)")
    parser.add_argument("--no-png", action="store_true", help="HTML only")
    output_flags(parser, "print a JSON summary")


def _metric(options: AblateOptions, model, questions, probes, steering):
    from fasb_lens.ablation import logprob_margin, mc2_metric, p_true_metric, probe_accuracy_metric
    from fasb_lens.data import probing_prompts, truthfulqa_prompt_format

    if options.metric == "logprob_margin":
        return logprob_margin(model, questions)
    if options.metric == "mc2":
        fmt = truthfulqa_prompt_format(options.data, options.prompt)
        return mc2_metric(model, questions, fmt=fmt, source="csv")
    prompts = probing_prompts(questions)
    if options.metric == "p_true":
        return p_true_metric(model, prompts, steering)
    later = [h for h in steering.heads if h.layer == max(x.layer for x in steering.heads)]
    return probe_accuracy_metric(model, prompts, probes, later)


def _patching_grid(options: AblateOptions, model, questions, steering, progress: bool):
    """Activation patching's grid: the tracker's reading on each false answer with one
    head's clean (true-answer) activation patched in."""
    import time

    from fasb_lens.ablation import AblationGrid, patching_effects, truthfulqa_pairs

    if options.metric != "p_true":
        raise ValueError(f"--estimator {PATCHING} measures the tracker: use --metric p_true")
    start = time.perf_counter()
    result = patching_effects(
        model, truthfulqa_pairs(questions), steering=steering, progress=progress
    )
    baseline = float(result.corrupted.mean())
    info = {
        "pairs": len(questions),
        "clean": float(result.clean.mean()),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return AblationGrid(
        result.effect + baseline, baseline, "p_true", "patch", PATCHING, steering.model_id, info
    )


def _study_grid(args, options: AblateOptions, model, questions, probes, steering, out: Path):
    """An ablation grid (exact, loop or attribution), resumed from ``out``."""
    from fasb_lens.ablation import AblationSettings, ablation_study
    from fasb_lens.activations import HeadActivations
    from fasb_lens.anchoring import PROBING, TUNING, build_steering
    from fasb_lens.options import from_args

    settings = from_args(AblationSettings, args)
    heads = list(steering.heads) if options.heads == "anchored" else None
    means = reference = study_steering = None
    if settings.kind in ("mean", "resample", "steer"):
        if not args.activations:
            raise ValueError(
                f"--kind {settings.kind} needs --activations (the folder of `collect`)"
            )
        probing = HeadActivations.load(Path(args.activations) / PROBING, model=model)
        means, reference = probing.z.mean(0), probing
        if settings.kind == "steer":
            tuning = HeadActivations.load(Path(args.activations) / TUNING, model=model)
            study_steering = build_steering(
                probes, probing, tuning, heads=heads or list(probes.ranked_heads())
            )
    return ablation_study(
        model,
        _metric(options, model, questions, probes, steering),
        settings,
        heads=heads,
        means=means,
        reference=reference,
        steering=study_steering,
        out=out,
        progress=not args.no_progress,
    )


def _summary(grid, out: Path) -> dict[str, Any]:
    return {
        "grid": str(out / grid.name),
        "metric": grid.metric,
        "kind": grid.kind,
        "estimator": grid.estimator,
        "baseline": grid.baseline,
        "seconds": grid.info.get("seconds"),
        "largest_drops": [{"head": str(h), "change": v} for h, v in grid.top(10)],
        "largest_gains": [
            {"head": str(h), "change": v} for h, v in grid.top(10, largest_drop=False)
        ],
    }


def run(args: argparse.Namespace) -> int:
    from fasb_lens import distributed
    from fasb_lens.data import load_questions
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import from_args
    from fasb_lens.plotting import head_heatmap, save_figure
    from fasb_lens.probes import HeadProbes
    from fasb_lens.steering import Steering

    options = from_args(AblateOptions, args)
    out = output_folder(args.out, "ablate")
    probes = HeadProbes.load(args.artifact)
    steering = Steering.load(args.artifact)
    model = model_for(steering.model_id, from_args(ModelOptions, args))
    steering.check_model(model)
    questions = load_questions(options.data)[: options.questions]
    if args.estimator == PATCHING:  # one forward per head pair: the first process alone
        if not distributed.is_main():
            return 0
        grid = _patching_grid(options, model, questions, steering, not args.no_progress)
        grid.save(out)
    else:
        grid = _study_grid(args, options, model, questions, probes, steering, out)
        if not distributed.is_main():  # the first process draws and reports for all
            return 0
    figure = head_heatmap(
        grid.effect,
        anchored=steering.heads,
        colorbar=f"change in {grid.metric}",
        zmid=0.0,
        title=f"Change in {grid.metric}: {grid.estimator}, {grid.kind} "
        f"(baseline {grid.baseline:.3f})",
    )
    save_figure(figure, out / grid.name, png=not args.no_png)
    report(_summary(grid, out), args.json)
    return 0
