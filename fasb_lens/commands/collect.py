"""``fasb-lens collect``: head activations of a dataset's probing and tuning prompts."""

from __future__ import annotations

import argparse

from fasb_lens.commands._common import output_flags, output_folder, report
from fasb_lens.options import AT_LEAST_ONE, Bounds, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--truthfulqa",
        "--data",
        dest="data",
        default="mini",
        help="TruthfulQA questions: 'mini', 'hub', a CSV or a folder",
    )
    parser.add_argument("--out", required=True, help="output folder (resumes if interrupted)")
    parser.add_argument("--model", help="hub name or folder (default: the embedded model)")
    parser.add_argument("--batch-size", type=bounded(int, AT_LEAST_ONE), default=32)
    parser.add_argument(
        "--limit", type=bounded(int, AT_LEAST_ONE), help="only the first N questions"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the tuning prompts")
    parser.add_argument("--no-tuning", action="store_true", help="skip the tuning prompts")
    parser.add_argument(
        "--caa-layer",
        type=bounded(int, Bounds(minimum=-1)),
        help="residual layer for the CAA baseline (default: middle; -1: none)",
    )
    output_flags(parser, "print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from fasb_lens import storage
    from fasb_lens.anchoring import collect_anchoring_activations, truthfulqa_prompts
    from fasb_lens.data import load_questions
    from fasb_lens.models import load_model
    from fasb_lens.splits import authors_question_order

    out = output_folder(args.out, "collect")
    questions = load_questions(args.data)
    if args.limit:
        questions = questions[: args.limit]
    model = load_model(args.model)
    if args.caa_layer is not None and args.caa_layer >= model.cfg.n_layers:
        last = model.cfg.n_layers - 1
        raise ValueError(f"--caa-layer {args.caa_layer} is not a layer of this model (0..{last})")
    storage.write_json(
        out / storage.QUESTIONS,
        {"data": str(args.data), "authors_order": authors_question_order(questions)},
    )
    probing, tuning = truthfulqa_prompts(questions, tuning_seed=args.seed)
    layer = model.cfg.n_layers // 2 if args.caa_layer is None else args.caa_layer
    activations = collect_anchoring_activations(
        model,
        probing,
        None if args.no_tuning else tuning,
        residual_layer=layer if layer >= 0 else None,
        out_dir=out,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    summary: dict = {"questions": len(questions), "out": str(out)}
    seconds = activations.seconds
    if activations.residual is not None:
        summary["residual"] = {
            "layer": layer,
            "shape": list(activations.residual.z.shape),
            "seconds": seconds["residual"],
        }
    sets = {"probing": activations.probing}
    if not args.no_tuning:
        sets["tuning"] = activations.tuning
    for name, acts in sets.items():
        summary[name] = {
            "prompts": len(acts),
            "shape": list(acts.z.shape),
            "seconds": seconds[name],
        }
    report(summary, args.json)
    return 0
