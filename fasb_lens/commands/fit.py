"""``fasb-lens fit``: activations -> per-head probes, the anchored heads and their vectors."""

from __future__ import annotations

import argparse
import time

from fasb_lens.commands._common import existing_folder, output_flags, output_folder, report
from fasb_lens.options import NON_NEGATIVE, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.anchoring import AnchoringSettings
    from fasb_lens.options import add_options
    from fasb_lens.policies import PolicySettings
    from fasb_lens.splits import SplitSettings

    parser.add_argument("--activations", required=True, help="folder written by `collect`")
    parser.add_argument("--out", required=True, help="artifact folder")
    add_options(parser, AnchoringSettings, exclude=("batch_size", "tuning_seed"))
    parser.add_argument(
        "--protocol",
        choices=["authors", "kfold", "train_val"],
        default="authors",
        help="authors: contiguous folds in mc_task order, seeded validation draws",
    )
    parser.add_argument("--fold", type=bounded(int, NON_NEGATIVE), default=0)
    add_options(parser, SplitSettings)
    # stored in the artifact as the policies' defaults (`generate` uses them)
    add_options(parser, PolicySettings)
    parser.add_argument(
        "--device",
        help="where the torch engine fits the probes: cpu, cuda, cuda:1 (default: the CPU; "
        "fit loads no model, it reads the activations `collect` wrote)",
    )
    output_flags(parser, "print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from fasb_lens import storage
    from fasb_lens.anchoring import AnchoringActivations, AnchoringSettings, fit_anchoring
    from fasb_lens.options import from_args
    from fasb_lens.policies import PolicySettings
    from fasb_lens.splits import SplitSettings, authors_folds, kfold_splits, train_val_split

    folder = existing_folder(args.activations, "--activations", "the folder `collect` wrote")
    out = output_folder(args.out, "fit")
    activations = AnchoringActivations.load(folder)
    order_file = folder / storage.QUESTIONS
    if order_file.is_file():
        order = storage.read_json(order_file, "the questions of a collection")["authors_order"]
    else:
        order = list(dict.fromkeys(activations.probing.groups or []))
    anchor = from_args(AnchoringSettings, args)
    splitting = from_args(SplitSettings, args)
    if args.protocol == "train_val":
        split = train_val_split(order, val_fraction=splitting.val_fraction, seed=splitting.seed)
    else:
        make = authors_folds if args.protocol == "authors" else kfold_splits
        folds = make(
            order,
            n_folds=splitting.n_folds,
            val_fraction=splitting.val_fraction,
            seed=splitting.seed,
        )
        if not 0 <= args.fold < len(folds):
            raise ValueError(f"--fold must be in 0..{len(folds) - 1}, got {args.fold}")
        split = folds[args.fold]
    start = time.perf_counter()
    anchoring = fit_anchoring(
        activations,
        split,
        top_k=anchor.top_k,
        direction=anchor.direction,  # type: ignore[arg-type]
        seed=splitting.seed,
        defaults=from_args(PolicySettings, args),
        engine=anchor.engine,  # type: ignore[arg-type]
        progress=not args.no_progress,
        device=args.device,
    )
    fit_seconds = time.perf_counter() - start
    anchoring.save(out)
    steering, probes = anchoring.steering, anchoring.probes
    summary = {
        "artifact": str(args.out),
        "model_id": steering.model_id,
        "direction": anchor.direction,
        "top_k": anchor.top_k,
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
        **probes.summary(anchor.top_k),
    }
    report(summary, args.json)
    return 0
