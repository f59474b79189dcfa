"""``fasb-lens figures``: every figure of a ``reproduce`` (or ``mc-datasets``) run."""

from __future__ import annotations

import argparse


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", required=True, help="folder written by `reproduce` or `mc-datasets`"
    )
    parser.add_argument("--out", default="figures", help="output folder")
    parser.add_argument("--no-png", action="store_true", help="HTML only")


def run(args: argparse.Namespace) -> int:
    from fasb_lens.commands._common import existing_folder
    from fasb_lens.run_figures import render_run

    run = existing_folder(args.run, "--run", "the folder `reproduce` or `mc-datasets` wrote")
    for path, caption in render_run(run, args.out, png=not args.no_png):
        print(f"{path}  {caption}")
    return 0
