"""``fasb-lens bench``: benchmarks measured side by side, written as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fasb_lens.commands._common import data_dir
from fasb_lens.models import DTYPES
from fasb_lens.options import AT_LEAST_ONE, Bounds, bounded


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", nargs="*", help="entries to run (default: all)")
    parser.add_argument("--out", default="bench.json", help="JSON file to write")
    parser.add_argument("--data", help="data folder (default: $FASB_LENS_DATA)")
    parser.add_argument("--n-prompts", type=bounded(int, AT_LEAST_ONE), default=1000)
    parser.add_argument("--batch-size", type=bounded(int, AT_LEAST_ONE), default=32)
    parser.add_argument(
        "--mc-questions", type=bounded(int, AT_LEAST_ONE), default=50, help="questions for `mc`"
    )
    parser.add_argument(
        "--ablation-questions",
        type=bounded(int, AT_LEAST_ONE),
        default=20,
        help="questions for `ablation`",
    )
    parser.add_argument(
        "--reproduce-questions",
        type=bounded(int, Bounds(minimum=4)),
        default=40,
        help="questions of the `reproduce` subset (its time is extrapolated to the dataset)",
    )
    parser.add_argument(
        "--reproduce-out",
        help="keep the `reproduce` entry's run in this new folder (default: a temporary one)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="the model's parameter dtype for every entry (default: float32)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from fasb_lens import storage
    from fasb_lens.bench import run_benchmarks

    out = Path(args.out)
    report = run_benchmarks(
        args.only or None,
        data_dir=data_dir(args.data),
        n_prompts=args.n_prompts,
        batch_size=args.batch_size,
        mc_questions=args.mc_questions,
        ablation_questions=args.ablation_questions,
        reproduce_questions=args.reproduce_questions,
        reproduce_out=Path(args.reproduce_out) if args.reproduce_out else None,
        dtype=args.dtype,
        progress=not args.no_progress,
        on_result=lambda report: storage.write_json(out, report, indent=2),
    )
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0
