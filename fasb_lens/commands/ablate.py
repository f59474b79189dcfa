"""``fasb-lens ablate``: knock out (or steer) each head and measure a metric."""

from __future__ import annotations

import argparse
from pathlib import Path

from fasb_lens.commands._common import model_for, output_flags, output_folder, report
from fasb_lens.options import AT_LEAST_ONE, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", required=True, help="folder written by `fit`")
    parser.add_argument("--activations", help="folder written by `collect` (mean and steer modes)")
    parser.add_argument(
        "--truthfulqa",
        "--data",
        dest="data",
        default="mini",
        help="TruthfulQA questions the metric uses: 'mini', a CSV or a folder",
    )
    parser.add_argument(
        "--questions", type=bounded(int, AT_LEAST_ONE), default=20, help="questions the metric uses"
    )
    parser.add_argument(
        "--metric", choices=["logprob_margin", "mc2", "probe_accuracy"], default="logprob_margin"
    )
    parser.add_argument("--heads", choices=["all", "top-k"], default="all")
    parser.add_argument("--mode", choices=["zero", "mean", "steer"], default="zero")
    parser.add_argument("--strength", type=float, default=5.0, help="alpha for --mode steer")
    parser.add_argument("--model", help="hub name or folder (default: the artifact's model)")
    parser.add_argument("--out", required=True, help="output folder (resumes if interrupted)")
    parser.add_argument("--no-png", action="store_true", help="HTML only")
    output_flags(parser, "print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from fasb_lens.ablation import ablation_study, logprob_margin, mc2_metric, probe_accuracy_metric
    from fasb_lens.activations import HeadActivations
    from fasb_lens.anchoring import PROBING, TUNING, build_steering
    from fasb_lens.data import load_prompt_format, load_questions, probing_prompts
    from fasb_lens.plotting import head_heatmap, save_figure
    from fasb_lens.probes import HeadProbes
    from fasb_lens.steering import Steering

    out = output_folder(args.out, "ablate")
    probes = HeadProbes.load(args.artifact)
    steering = Steering.load(args.artifact)
    model = model_for(steering.model_id, args.model)
    steering.check_model(model)
    questions = load_questions(args.data)[: args.questions]
    heads = list(steering.heads) if args.heads == "top-k" else None
    if args.metric == "logprob_margin":
        metric = logprob_margin(questions)
    elif args.metric == "mc2":
        metric = mc2_metric(questions, fmt=load_prompt_format(), source="csv")
    else:
        later = [h for h in steering.heads if h.layer == max(x.layer for x in steering.heads)]
        metric = probe_accuracy_metric(probing_prompts(questions), probes, later)
    means = study_steering = None
    if args.mode in ("mean", "steer"):
        if not args.activations:
            raise ValueError(f"--mode {args.mode} needs --activations (the folder of `collect`)")
        probing = HeadActivations.load(Path(args.activations) / PROBING, model=model)
        means = probing.z.mean(0)
        if args.mode == "steer":
            tuning = HeadActivations.load(Path(args.activations) / TUNING, model=model)
            study_steering = build_steering(
                probes, probing, tuning, heads=heads or list(probes.ranked_heads())
            )
    result = ablation_study(
        model,
        metric,
        heads=heads,
        mode=args.mode,
        means=means,
        steering=study_steering,
        strength=args.strength,
        metric_name=args.metric,
        out=out,
        progress=not args.no_progress,
    )
    verb = "steering" if args.mode == "steer" else f"{args.mode}-ablating"
    figure = head_heatmap(
        result.effect,
        anchored=steering.heads,
        colorbar=f"change in {args.metric}",
        zmid=0.0,
        title=f"Change in {args.metric} from {verb} each head (baseline {result.baseline:.3f})",
    )
    save_figure(figure, out / f"ablation_{args.metric}_{args.mode}", png=not args.no_png)
    summary = {
        "metric": args.metric,
        "mode": args.mode,
        "baseline": result.baseline,
        "largest_drops": [{"head": str(h), "change": v} for h, v in result.top(10)],
        "largest_gains": [
            {"head": str(h), "change": v} for h, v in result.top(10, largest_drop=False)
        ],
    }
    report(summary, args.json)
    return 0
