"""``fasb-lens ablate``: a per-head grid - exact ablations, attribution or activation patching."""

from __future__ import annotations

import argparse
from pathlib import Path

from fasb_lens.commands._common import model_for, output_flags, output_folder, report
from fasb_lens.options import AT_LEAST_ONE, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.ablation import KINDS, METHODS, METRICS

    parser.add_argument("--artifact", required=True, help="folder written by `fit`")
    parser.add_argument(
        "--method",
        choices=[*METHODS, "patching"],
        default="exact",
        help="exact grid, the head-by-head loop, attribution estimate, or activation patching",
    )
    parser.add_argument("--metric", choices=METRICS, default="logprob_margin")
    parser.add_argument(
        "--kind", "--mode", dest="kind", choices=KINDS, default="zero", help="what each head gets"
    )
    parser.add_argument("--heads", choices=["all", "anchored"], default="all")
    parser.add_argument(
        "--activations",
        help="folder written by `collect` (mean and resample ablation, steering each head)",
    )
    parser.add_argument(
        "--truthfulqa",
        "--data",
        dest="data",
        default="mini",
        help="TruthfulQA questions the metric uses: 'mini', a CSV or a folder",
    )
    parser.add_argument(
        "--questions", type=bounded(int, AT_LEAST_ONE), default=20, help="questions used"
    )
    parser.add_argument("--strength", type=float, default=5.0, help="alpha for --kind steer")
    parser.add_argument(
        "--samples", type=bounded(int, AT_LEAST_ONE), default=4, help="draws for --kind resample"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the resample draws")
    parser.add_argument("--model", help="hub name or folder (default: the artifact's model)")
    parser.add_argument("--out", required=True, help="output folder (resumes if interrupted)")
    parser.add_argument("--no-png", action="store_true", help="HTML only")
    output_flags(parser, "print a JSON summary")


def _metric(args, model, questions, probes, steering):
    from fasb_lens.ablation import logprob_margin, mc2_metric, p_true_metric, probe_accuracy_metric
    from fasb_lens.data import load_prompt_format, probing_prompts

    if args.metric == "logprob_margin":
        return logprob_margin(model, questions)
    if args.metric == "mc2":
        return mc2_metric(model, questions, fmt=load_prompt_format(), source="csv")
    prompts = probing_prompts(questions)
    if args.metric == "p_true":
        return p_true_metric(model, prompts, steering)
    later = [h for h in steering.heads if h.layer == max(x.layer for x in steering.heads)]
    return probe_accuracy_metric(model, prompts, probes, later)


def run(args: argparse.Namespace) -> int:
    import time

    from fasb_lens.ablation import AblationGrid, ablation_study, patching_effects, truthfulqa_pairs
    from fasb_lens.activations import HeadActivations
    from fasb_lens.anchoring import PROBING, TUNING, build_steering
    from fasb_lens.data import load_questions
    from fasb_lens.plotting import head_heatmap, save_figure
    from fasb_lens.probes import HeadProbes
    from fasb_lens.steering import Steering

    out = output_folder(args.out, "ablate")
    probes = HeadProbes.load(args.artifact)
    steering = Steering.load(args.artifact)
    model = model_for(steering.model_id, args.model)
    steering.check_model(model)
    questions = load_questions(args.data)[: args.questions]
    heads = list(steering.heads) if args.heads == "anchored" else None
    if args.method == "patching":
        if args.metric != "p_true":
            raise ValueError("--method patching measures the tracker: use --metric p_true")
        start = time.perf_counter()
        result = patching_effects(
            model, truthfulqa_pairs(questions), steering=steering, progress=not args.no_progress
        )
        seconds = round(time.perf_counter() - start, 2)
        baseline = float(result.corrupted.mean())
        grid = AblationGrid(
            result.effect + baseline,
            baseline,
            "p_true",
            "patch",
            "patching",
            steering.model_id,
            {"pairs": len(questions), "clean": float(result.clean.mean()), "seconds": seconds},
        )
        grid.save(out)
    else:
        means = reference = study_steering = None
        if args.kind in ("mean", "resample", "steer"):
            if not args.activations:
                raise ValueError(
                    f"--kind {args.kind} needs --activations (the folder of `collect`)"
                )
            probing = HeadActivations.load(Path(args.activations) / PROBING, model=model)
            means, reference = probing.z.mean(0), probing
            if args.kind == "steer":
                tuning = HeadActivations.load(Path(args.activations) / TUNING, model=model)
                study_steering = build_steering(
                    probes, probing, tuning, heads=heads or list(probes.ranked_heads())
                )
        grid = ablation_study(
            model,
            _metric(args, model, questions, probes, steering),
            heads=heads,
            kind=args.kind,
            method=args.method,
            means=means,
            reference=reference,
            steering=study_steering,
            strength=args.strength,
            samples=args.samples,
            seed=args.seed,
            out=out,
            progress=not args.no_progress,
        )
    figure = head_heatmap(
        grid.effect,
        anchored=steering.heads,
        colorbar=f"change in {grid.metric}",
        zmid=0.0,
        title=f"Change in {grid.metric}: {grid.method}, {grid.kind} (baseline {grid.baseline:.3f})",
    )
    save_figure(figure, out / grid.name, png=not args.no_png)
    summary = {
        "grid": str(out / grid.name),
        "metric": grid.metric,
        "kind": grid.kind,
        "method": grid.method,
        "baseline": grid.baseline,
        "seconds": grid.info.get("seconds"),
        "largest_drops": [{"head": str(h), "change": v} for h, v in grid.top(10)],
        "largest_gains": [
            {"head": str(h), "change": v} for h, v in grid.top(10, largest_drop=False)
        ],
    }
    report(summary, args.json)
    return 0
