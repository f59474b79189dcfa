"""``fasb-lens bench``: benchmarks measured side by side, written as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fasb_lens.commands._common import data_dir


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.bench import BENCHMARKS
    from fasb_lens.bench.context import BenchSettings
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import add_options

    parser.add_argument(
        "--only",
        nargs="*",
        help=f"entries to run (default: all of {', '.join(BENCHMARKS.names())})",
    )
    parser.add_argument("--out", default="bench.json", help="JSON file to write")
    parser.add_argument("--data", help="data folder (default: $FASB_LENS_DATA)")
    add_options(parser, BenchSettings)
    add_options(parser, ModelOptions)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from fasb_lens import storage
    from fasb_lens.bench import run_benchmarks
    from fasb_lens.bench.context import BenchSettings
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import from_args

    out = Path(args.out)
    report = run_benchmarks(
        args.only or None,
        data_dir=data_dir(args.data),
        settings=from_args(BenchSettings, args),
        model_options=from_args(ModelOptions, args),
        progress=not args.no_progress,
        on_result=lambda report: storage.write_json(out, report, indent=2),
    )
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0
