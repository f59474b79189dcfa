"""``fasb-lens fit``: activations -> per-head probes, the anchored heads and their vectors."""

from __future__ import annotations

import argparse
import time

from fasb_lens.commands._common import existing_folder, output_flags, output_folder, report
from fasb_lens.options import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, PROBABILITY, Bounds, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.steering import DIRECTION_KINDS, PolicyDefaults

    defaults = PolicyDefaults()
    parser.add_argument("--activations", required=True, help="folder written by `collect`")
    parser.add_argument("--out", required=True, help="artifact folder")
    parser.add_argument(
        "--top-k", type=bounded(int, AT_LEAST_ONE), default=24, help="anchored heads (paper: 24)"
    )
    parser.add_argument(
        "--direction",
        choices=DIRECTION_KINDS,
        default="prototype",
        help="prototype: class-mean difference (the authors' released run); probe: probe weights",
    )
    parser.add_argument(
        "--protocol",
        choices=["authors", "kfold", "train_val"],
        default="authors",
        help="authors: 2 contiguous folds in mc_task order, 20%% validation, seed 42",
    )
    parser.add_argument("--fold", type=bounded(int, NON_NEGATIVE), default=0)
    parser.add_argument("--n-folds", type=bounded(int, Bounds(minimum=2)), default=2)
    parser.add_argument("--val-fraction", type=bounded(float, FRACTION), default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--engine", choices=["torch", "sklearn"], default="torch")
    parser.add_argument(
        "--alpha",
        type=bounded(float, NON_NEGATIVE),
        default=defaults.alpha,
        help="default strength stored",
    )
    parser.add_argument(
        "--threshold",
        type=bounded(float, PROBABILITY),
        default=defaults.threshold,
        help="default threshold stored",
    )
    parser.add_argument(
        "--backtrack-tokens",
        type=bounded(int, NON_NEGATIVE),
        default=defaults.backtrack_tokens,
        help="default stored",
    )
    output_flags(parser, "print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from fasb_lens import storage
    from fasb_lens.anchoring import AnchoringActivations, fit_anchoring
    from fasb_lens.splits import authors_folds, kfold_splits, train_val_split
    from fasb_lens.steering import PolicyDefaults

    folder = existing_folder(args.activations, "--activations", "the folder `collect` wrote")
    out = output_folder(args.out, "fit")
    activations = AnchoringActivations.load(folder)
    order_file = folder / storage.QUESTIONS
    if order_file.is_file():
        order = storage.read_json(order_file, "the questions of a collection")["authors_order"]
    else:
        order = list(dict.fromkeys(activations.probing.groups or []))
    if args.protocol == "train_val":
        split = train_val_split(order, val_fraction=args.val_fraction, seed=args.seed)
    else:
        make = authors_folds if args.protocol == "authors" else kfold_splits
        folds = make(order, n_folds=args.n_folds, val_fraction=args.val_fraction, seed=args.seed)
        if not 0 <= args.fold < len(folds):
            raise ValueError(f"--fold must be in 0..{len(folds) - 1}, got {args.fold}")
        split = folds[args.fold]
    start = time.perf_counter()
    anchoring = fit_anchoring(
        activations,
        split,
        top_k=args.top_k,
        direction=args.direction,
        seed=args.seed,
        defaults=PolicyDefaults(args.alpha, args.threshold, args.backtrack_tokens),
        engine=args.engine,
        progress=not args.no_progress,
    )
    fit_seconds = time.perf_counter() - start
    anchoring.save(out)
    steering, probes = anchoring.steering, anchoring.probes
    summary = {
        "artifact": str(args.out),
        "model_id": steering.model_id,
        "direction": args.direction,
        "top_k": args.top_k,
        "split": {
            "protocol": split.protocol,
            "fold": split.fold,
            "seed": split.seed,
            "questions": {
                "train": len(split.train),
                "val": len(split.val),
                "test": len(split.test),
            },
        },
        "fit_seconds": round(fit_seconds, 2),
        "anchored_heads": [str(head) for head in steering.heads],
        **probes.summary(args.top_k),
    }
    report(summary, args.json)
    return 0
