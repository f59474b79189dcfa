"""``fasb-lens reproduce``: the paper's TruthfulQA table, cross-validated and resumable."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from fasb_lens import distributed, storage
from fasb_lens.commands._common import (
    output_flags,
    output_folder,
    print_wall_time,
    settings_from,
)
from fasb_lens.options import Bounds, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.evaluation.config import ExperimentConfig
    from fasb_lens.options import add_options

    parser.add_argument(
        "--config",
        help="start from the settings in this JSON file (a run's config.json, or one of "
        "configs/); options given on the command line override them",
    )
    add_options(parser, ExperimentConfig, only_given=True)
    parser.add_argument(
        "--out", required=True, help="run folder (rerun the same command to resume)"
    )
    parser.add_argument(
        "--train-fraction",
        type=bounded(float, Bounds(above=0, maximum=1)),
        nargs="+",
        default=[ExperimentConfig.train_fraction],
        help="train on this fraction of each training fold; several values run a sweep",
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="judge and summarise what the run folder holds so far; evaluate nothing new",
    )
    output_flags(parser, "print the summary as JSON")


def settings(args: argparse.Namespace):
    """The run's :class:`~fasb_lens.evaluation.config.ExperimentConfig`: ``--config``'s
    settings with the options given laid over them; ``--seed S`` alone stands for
    ``--seeds S`` (also over a file's seeds), and both given must agree."""
    from fasb_lens.evaluation.config import ExperimentConfig

    if hasattr(args, "seed") and not hasattr(args, "seeds"):
        args.seeds = [args.seed]
    return settings_from(ExperimentConfig, args)


def run(args: argparse.Namespace) -> int:
    from fasb_lens.evaluation.experiment import Experiment
    from fasb_lens.evaluation.summary import write_fraction_sweep

    start = time.perf_counter()
    config = settings(args)
    out, progress = output_folder(args.out, "reproduce"), not args.no_progress
    # several fractions make the data-efficiency sweep: a run folder per fraction, sharing
    # the activations and the model
    sweep = len(args.train_fraction) > 1
    summaries, model = {}, None
    for fraction in args.train_fraction:
        experiment = Experiment(
            replace(config, train_fraction=fraction),
            out / f"train_fraction_{fraction:g}" if sweep else out,
            model=model,
            activations_dir=out / storage.ACTIVATIONS_DIR,
            progress=progress,
        )
        model = experiment.model
        summaries[fraction] = experiment.summarize() if args.summary_only else experiment.run()
    if not distributed.is_main():  # the first process reports for all
        return 0
    if args.json:
        only = next(iter(summaries.values()))
        print(json.dumps({str(f): s for f, s in summaries.items()} if sweep else only, indent=2))
    elif sweep:
        print(write_fraction_sweep(out, summaries), end="")
    else:
        print((out / storage.RESULTS_TABLE).read_text())
        print(
            f"written to {out}/ (table.md, results.json, results.csv, comparisons.md, "
            "per_question.csv, answers.csv)"
        )
    if not args.summary_only:
        print(f"\nwhere the time went (this session; {storage.TIMINGS} keeps it):", file=sys.stderr)
        print(experiment.folder.profile.report(), file=sys.stderr)
    print_wall_time(start)
    return 0
