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


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.evaluation.config import DatasetsConfig
    from fasb_lens.options import add_options

    parser.add_argument("--data", help="data folder (default: $FASB_LENS_DATA)")
    parser.add_argument("--out", required=True, help="run folder (resumes if interrupted)")
    add_options(parser, DatasetsConfig)
    output_flags(parser, "print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from fasb_lens import distributed, storage
    from fasb_lens.evaluation.config import DatasetsConfig
    from fasb_lens.evaluation.mc_suite import run_mc_datasets
    from fasb_lens.options import from_args

    start = time.perf_counter()
    config = from_args(DatasetsConfig, args)
    data = data_dir(args.data)
    if data is None:
        raise ValueError("--data (or FASB_LENS_DATA) must name the data folder")
    existing_folder(str(data), "--data", "the data folder (copa/, snli/, mmlu/, ...)")
    out = output_folder(args.out, "mc-datasets")
    results = run_mc_datasets(config, data, out, progress=not args.no_progress)
    if not distributed.is_main():  # the first process reports for all
        return 0
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print((out / f"{storage.MC_DATASETS_TABLE}.md").read_text())
    print_wall_time(start)
    return 0
