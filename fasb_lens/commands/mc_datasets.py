"""``fasb-lens mc-datasets``: accuracy on the paper's multiple-choice datasets."""

from __future__ import annotations

import argparse
import json
import time

from fasb_lens.commands._common import (
    data_dir,
    existing_folder,
    output_flags,
    output_folder,
    print_wall_time,
)
from fasb_lens.options import AT_LEAST_ONE, NON_NEGATIVE, PROBABILITY, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.data.mc import DATASETS

    parser.add_argument("--data", help="data folder (default: $FASB_LENS_DATA)")
    parser.add_argument("--out", required=True, help="run folder (resumes if interrupted)")
    parser.add_argument(
        "--datasets",
        "--dataset",
        dest="datasets",
        nargs="+",
        default=[name for name, spec in DATASETS.items() if spec.default_path is not None],
        help=f"of {', '.join(DATASETS)} (a,b or a b)",
    )
    parser.add_argument("--story-cloze", help="the ROCStories cloze CSV, if you have it")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["none", "fixed", "fasb", "fixed_random", "fasb_random"],
        help="policies to compare (also baseline = none, iti = fixed; a,b or a b)",
    )
    parser.add_argument(
        "--limit", type=bounded(int, NON_NEGATIVE), default=400, help="items per dataset (0: all)"
    )
    parser.add_argument("--top-k", type=bounded(int, AT_LEAST_ONE), default=24)
    parser.add_argument(
        "--alpha",
        type=bounded(float, NON_NEGATIVE),
        default=8.0,
        help="strength of FASB's vectors (with --no-calibrate)",
    )
    parser.add_argument(
        "--fixed-alpha",
        type=bounded(float, NON_NEGATIVE),
        help="strength of ITI (default: --alpha)",
    )
    parser.add_argument(
        "--threshold",
        type=bounded(float, PROBABILITY),
        default=0.6,
        help="trigger below this p_true",
    )
    parser.add_argument("--backtrack-tokens", type=bounded(int, NON_NEGATIVE), default=1)
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="use --alpha/--fixed-alpha/--threshold as given instead of choosing them on "
        "each dataset's validation items",
    )
    parser.add_argument("--seed", type=int, default=0)
    output_flags(parser, "print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from fasb_lens.data.mc import dataset
    from fasb_lens.evaluation.mc_suite import run_mc_datasets
    from fasb_lens.options import split_names
    from fasb_lens.policies import make_policy, policy_spec, resolve

    start = time.perf_counter()
    data = data_dir(args.data)
    if data is None:
        raise ValueError("--data (or FASB_LENS_DATA) must name the data folder")
    existing_folder(str(data), "--data", "the data folder (copa/, snli/, mmlu/, ...)")
    out = output_folder(args.out, "mc-datasets")
    methods = split_names(args.methods, resolve)
    unknown = [name for name in methods if policy_spec(name).needs == "caa"]
    if unknown:
        raise ValueError(f"method(s) {unknown} need a CAA vector, which the MC datasets lack")
    policies = {
        name: make_policy(
            name,
            alpha=args.fixed_alpha
            if policy_spec(name).family == "fixed" and args.fixed_alpha is not None
            else args.alpha,
            threshold=args.threshold,
            backtrack_tokens=args.backtrack_tokens,
        )
        for name in methods
    }
    names = [dataset(name).name for name in split_names(args.datasets)]
    results = run_mc_datasets(
        data,
        out,
        datasets=names,
        policies=policies,
        paths={"story_cloze": args.story_cloze} if args.story_cloze else None,
        limit=args.limit or None,
        top_k=args.top_k,
        seed=args.seed,
        calibrate=not args.no_calibrate,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print((out / "mc_datasets.md").read_text())
    print_wall_time(start)
    return 0
