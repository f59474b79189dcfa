"""``fasb-lens publish``: a finished run's numbers into ``results/``, under fixed names."""

from __future__ import annotations

import argparse


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a finished `reproduce` or `mc-datasets` run folder")
    parser.add_argument("results", nargs="?", default="results", help="where to publish")


def run(args: argparse.Namespace) -> int:
    from fasb_lens.commands._common import existing_folder
    from fasb_lens.evaluation.publish import publish

    folder = existing_folder(
        args.run, "RUN", "a run folder written by `reproduce` or `mc-datasets`"
    )
    for path in publish(folder, args.results):
        print(path)
    return 0
