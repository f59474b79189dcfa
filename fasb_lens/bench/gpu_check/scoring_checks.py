"""The scoring checks: multiple choice on the GPU against the CPU's float32 numbers, and
the exact per-head ablation engine against the head-by-head loop."""

from __future__ import annotations

from typing import Any

from fasb_lens.ablation import ablation_study, logprob_margin
from fasb_lens.bench.gpu_check.results import timed
from fasb_lens.models import model_shape
from fasb_lens.multiple_choice import evaluate_mc
from fasb_lens.policies import FASB, Unsteered


def mc_scores(model, questions, steering, fmt) -> list[dict[str, Any]]:
    """Each question's MC2 and answers' log-probabilities, unsteered and under FASB."""
    policies = {"none": Unsteered(), "fasb": FASB(alpha=8.0, threshold=0.5, backtrack_tokens=2)}
    return [
        evaluate_mc(model, q, policies, fmt=fmt, steering=steering, source="csv") for q in questions
    ]


def compare_mc(got: list[dict], reference: list[dict]) -> dict[str, float]:
    """The largest and mean differences of MC2, and the largest of an unsteered answer's
    log-probability, between two runs of :func:`mc_scores`."""
    mc2 = [
        abs(a[name]["mc2"] - b[name]["mc2"])
        for a, b in zip(got, reference, strict=True)
        for name in ("none", "fasb")
    ]
    log_probs = [
        abs(x["log_prob"] - y["log_prob"])
        for a, b in zip(got, reference, strict=True)
        for x, y in zip(a["none"]["answers"], b["none"]["answers"], strict=True)
    ]
    return {
        "mc2_max_difference": max(mc2),
        "mc2_mean_difference": sum(mc2) / len(mc2),
        "log_prob_max_difference": max(log_probs),
    }


MC_TOLERANCE = {"float32": (1e-3, 1e-3), "half": (0.05, 0.5)}
"""Largest mean MC2 difference and unsteered log-probability difference (nats) that pass
against the CPU's float32 numbers; ten times either fails (a device bug, not rounding)."""


def check_mc_against_cpu(model, questions, steering, fmt, reference, half, results, dtype):
    """Multiple choice on this device is within :data:`MC_TOLERANCE` of ``reference``
    (:func:`mc_scores` on the CPU in float32); past ten times the tolerance it fails."""
    with timed(results, "multiple choice vs CPU float32", dtype) as found:
        numbers = compare_mc(mc_scores(model, questions, steering, fmt), reference)
        mc2_limit, log_prob_limit = MC_TOLERANCE["half" if half else "float32"]
        found["numbers"] = numbers
        found["detail"] = (
            f"MC2 differs by {numbers['mc2_mean_difference']:.4f} on average "
            f"(max {numbers['mc2_max_difference']:.4f}), log-probs by at most "
            f"{numbers['log_prob_max_difference']:.4f}"
        )
        worst = max(
            numbers["mc2_mean_difference"] / mc2_limit,
            numbers["log_prob_max_difference"] / log_prob_limit,
        )
        if not worst <= 10:  # also catches NaN
            found["status"] = "FAIL"
        elif worst > 1:
            found["status"] = "warn"


def check_exact_equals_loop(model, questions, half, results, dtype) -> None:
    """``ablate --estimator exact`` gives each head the effect the head-by-head loop gives,
    on two heads of the first, middle and last layers."""
    with timed(results, "ablate: exact engine = loop", dtype) as found:
        shape = model_shape(model)
        layers = sorted({0, shape.n_layers // 2, shape.n_layers - 1})
        heads = [h for h in shape.heads if h.layer in layers and h.head < 2]
        metric = logprob_margin(model, questions)
        exact = ablation_study(model, metric, heads=heads, estimator="exact", progress=False)
        loop = ablation_study(model, metric, heads=heads, estimator="loop", progress=False)
        gap = max(abs(float(exact.values[h]) - float(loop.values[h])) for h in heads)
        limit = 0.05 if half else 1e-4
        found["numbers"] = {"heads": len(heads), "max_difference": gap}
        found["detail"] = f"{len(heads)} heads, largest difference {gap:.2e} (limit {limit:g})"
        if not gap <= 10 * limit:
            found["status"] = "FAIL"
        elif gap > limit:
            found["status"] = "warn"
