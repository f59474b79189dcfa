"""``fasb-lens demo``: the whole method on the default model and the mini set, offline."""

from __future__ import annotations

import argparse


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.demo import DemoSettings
    from fasb_lens.options import add_options

    parser.add_argument("--out", default="fasb_lens_demo", help="output folder")
    add_options(parser, DemoSettings)
    parser.add_argument("--no-png", action="store_true", help="write HTML figures only")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from fasb_lens.demo import DemoSettings, run_demo
    from fasb_lens.options import from_args

    settings = from_args(DemoSettings, args)
    model = "the embedded SmolLM2-135M-Instruct" if settings.model.name is None else "your model"
    print(f"fasb-lens demo: FASB on {model} and the built-in mini set")
    print("(94 questions about common misconceptions; offline with the embedded model)\n")
    result = run_demo(args.out, settings, png=not args.no_png, progress=not args.no_progress)
    probes, steering, calibration = result.probes, result.steering, result.calibration
    print(f"model        {steering.model_id} ({steering.shape.describe()})")
    print(
        f"probes       one per head; validation questions' majority baseline "
        f"{probes.val_majority:.2f}; best heads:"
    )
    for head in steering.heads[:8]:
        print(
            f"             {head!s:<7} validation {probes.val_accuracy[head]:.2f}   "
            f"training {probes.train_accuracy[head]:.2f}"
        )
    threshold = calibration.thresholds["generation"]
    chosen = calibration.trackers[calibration.tracker]
    print(
        f"threshold    {threshold:.3f}, chosen on {calibration.questions} validation answers "
        f"({calibration.tracker} tracker; Youden's J {chosen['j']:.2f}, AUC {chosen['auc']:.2f} "
        f"at detecting the untruthful ones, judged by {calibration.judge})"
    )
    print(
        f"strength     alpha {settings.alpha} (steering at alpha * (1 - p_true)), "
        f"backtracking {settings.backtrack_tokens} tokens\n"
    )
    for question, plain, steered in zip(
        result.questions, result.plain, result.steered, strict=True
    ):
        print(f"Q: {question}")
        print(f"   without steering: {plain.answer}")
        if steered.triggered:
            print(
                f"   FASB: triggered at token {steered.trigger_step} "
                f"(p_true {steered.trigger_p_true:.2f} < {threshold:.2f}), "
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
