"""``fasb-lens collect``: head activations of a dataset's probing and tuning prompts."""

from __future__ import annotations

import argparse

from fasb_lens.commands._common import output_flags, output_folder, report


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.anchoring import CollectSettings
    from fasb_lens.options import add_options

    parser.add_argument("--out", required=True, help="output folder (resumes if interrupted)")
    add_options(parser, CollectSettings)
    output_flags(parser, "print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from fasb_lens import storage
    from fasb_lens.anchoring import (
        CollectSettings,
        collect_anchoring_activations,
        truthfulqa_prompts,
    )
    from fasb_lens.data import load_questions
    from fasb_lens.options import from_args
    from fasb_lens.splits import authors_question_order

    settings = from_args(CollectSettings, args)
    out = output_folder(args.out, "collect")
    questions = load_questions(settings.data)
    if settings.limit:
        questions = questions[: settings.limit]
    model = settings.model.load()
    caa_layer = settings.caa_layer
    if caa_layer is not None and caa_layer >= model.cfg.n_layers:
        last = model.cfg.n_layers - 1
        raise ValueError(f"--caa-layer {caa_layer} is not a layer of this model (0..{last})")
    storage.write_json(
        out / storage.QUESTIONS,
        {"data": str(settings.data), "authors_order": authors_question_order(questions)},
    )
    probing, tuning = truthfulqa_prompts(questions, tuning_seed=settings.tuning_seed)
    layer = model.cfg.n_layers // 2 if caa_layer is None else caa_layer
    activations = collect_anchoring_activations(
        model,
        probing,
        tuning if settings.tuning else None,
        residual_layer=layer if layer >= 0 else None,
        out_dir=out,
        batch_size=settings.batch_size,
        progress=not args.no_progress,
    )
    summary: dict = {"questions": len(questions), "out": str(out)}
    seconds = activations.seconds
    if activations.residual is not None:
        summary["residual"] = {
            "layer": layer,
            "shape": list(activations.residual.z.shape),
            "seconds": seconds["residual"],
        }
    sets = {"probing": activations.probing}
    if settings.tuning:
        sets["tuning"] = activations.tuning
    for name, acts in sets.items():
        summary[name] = {
            "prompts": len(acts),
            "shape": list(acts.z.shape),
            "seconds": seconds[name],
        }
    report(summary, args.json)
    return 0
