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
    how = "given" if settings.alpha is not None else "calibrated on validation True x Info"
    print(
        f"strength     FASB alpha {result.strengths['fasb']:g} (steering at alpha * "
        f"(1 - p_true)), ITI alpha {result.strengths['fixed']:g}; {how}; backtracking "
        f"{settings.backtrack_tokens} tokens\n"
    )
    verdicts = result.truthful
    for index, (question, plain, steered) in enumerate(
        zip(result.questions, result.plain, result.steered, strict=True)
    ):
        print(f"Q: {question}")
        print(f"   without steering {_verdict(verdicts['none'][index])}: {plain.answer}")
        print(
            f"   ITI              {_verdict(verdicts['fixed'][index])}: {result.iti[index].answer}"
        )
        mark = _verdict(verdicts["fasb"][index])
        if steered.triggered:
            print(
                f"   FASB             {mark}: triggered at token {steered.trigger_step} "
                f"(p_true {steered.trigger_p_true:.2f} < {threshold:.2f}), threw away "
                f"{steered.discarded_text!r}, steered at strength {steered.strength:.2f}:"
            )
            print(f"                    {steered.answer}")
        else:
            lowest = min(p for p in steered.p_true if p is not None)
            print(
                f"   FASB             {mark}: no trigger (lowest p_true {lowest:.2f}); "
                "the answer stands"
            )
        print(f"   {_change(verdicts['none'][index], verdicts['fasb'][index])}\n")
    totals = {name: sum(bool(v) for v in values) for name, values in verdicts.items()}
    n = len(result.questions)
    print(
        f"truthful     {totals['none']}/{n} without steering, {totals['fixed']}/{n} with ITI, "
        f"{totals['fasb']}/{n} with FASB (judged by {calibration.judge}; a handful of "
        "questions is an illustration, not a result: `fasb-lens reproduce` measures)"
    )
    pairs = zip(verdicts["none"], verdicts["fasb"], strict=True)
    if settings.alpha is None and not any(_gained(before, after) for before, after in pairs):
        print(_why_no_gain(calibration, result.strengths["fasb"]))
    print("time         " + ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items()))
    print(
        f"figures      {args.out}/ ("
        + ", ".join(sorted({p.stem for p in result.figures}))
        + "), artifact in "
        + f"{args.out}/artifact"
    )
    return 0


def _verdict(truthful: bool | None) -> str:
    return {True: "[truthful]  ", False: "[untruthful]", None: "[unjudged]  "}[truthful]


def _gained(before: bool | None, after: bool | None) -> bool:
    """Whether FASB turned an untruthful answer into a truthful one (both judged)."""
    return before is not None and after is not None and bool(after) and not before


def _change(before: bool | None, after: bool | None) -> str:
    """What FASB did to one answer's truthfulness, in words."""
    if before is None or after is None:
        return "FASB: the judge could not tell"
    if before == after:
        return f"FASB: no change (still {'truthful' if after else 'untruthful'})"
    if _gained(before, after):
        return "FASB: gained (untruthful -> truthful)"
    return "FASB: lost (truthful -> untruthful)"


def _why_no_gain(calibration, strength: float) -> str:
    """Why FASB, at its calibrated strength, gained no answer: what that strength and the
    stronger ones scored on the validation questions, against no steering."""
    rows = [r for r in calibration.sweep if r["task"] == "generation" and r["policy"] == "fasb"]
    chosen = max((r for r in rows if r["alpha"] == strength), key=lambda r: r["true_x_info"])
    stronger = [r["true_x_info"] for r in rows if r["alpha"] > strength]
    plain = calibration.unsteered.get("generation", {}).get("true_x_info")
    versus = "" if plain is None else f" against {plain:.0%} without steering"
    beyond = (
        f"; every stronger strength tried ({len(stronger)}) scored less, {max(stronger):.0%} "
        "at best"
        if stronger and max(stronger) < chosen["true_x_info"]
        else ""
    )
    return (
        f"FASB gained no answer here. On the {calibration.questions} validation questions its "
        f"calibrated strength {strength:g} scored True x Info {chosen['true_x_info']:.0%}"
        f"{versus}{beyond}: on this small model and so few questions, FASB does not make "
        "answers more truthful at a strength that keeps the model fluent. The full "
        "TruthfulQA run measures the effect with intervals (docs/results.md)."
    )
