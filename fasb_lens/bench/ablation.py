"""The ablation entry: the exact per-head grid against the head-by-head loop, a plain loop
and attribution, with the arithmetic each needs and this machine's matrix-product rate."""

from __future__ import annotations

import time
from typing import Any

import torch

from fasb_lens.bench.context import BenchContext, _timer
from fasb_lens.logprobs import continuation_log_probs
from fasb_lens.models import model_shape


def matmul_gflops(model, *, rows: int = 2048, tries: int = 5) -> float:
    """The best rate (GFLOP/s) of this machine at a large matrix product in the model's
    dtype, of the shape of a block's MLP over ``rows`` positions (the best of ``tries``
    timings of about 0.2 s each)."""
    cfg = model.cfg
    dtype = next(model.parameters()).dtype
    inputs = torch.randn(rows, cfg.d_model, dtype=dtype)
    weight = torch.randn(cfg.d_mlp, cfg.d_model, dtype=dtype)
    torch.nn.functional.linear(inputs, weight)
    best = 0.0
    for _ in range(tries):
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < 0.2:
            torch.nn.functional.linear(inputs, weight)
            reps += 1
        rate = 2 * rows * cfg.d_model * cfg.d_mlp * reps / (time.perf_counter() - start) / 1e9
        best = max(best, rate)
    return best


def _timings(ctx: BenchContext, model, metric, edits, sample, pairs) -> dict[str, Any]:
    """Seconds of each estimator on the same grid (the loops on ``sample`` heads only), the
    values they found and the baseline."""
    from fasb_lens.ablation import attribution_effects, exact_effects, loop_effects
    from fasb_lens.ablation.edits import edit_hooks
    from fasb_lens.interventions import hooked

    times: dict[str, Any] = {}
    with _timer(times, "exact_s"):
        times["baseline"], times["exact"] = exact_effects(
            model, metric, edits, progress=ctx.progress
        )
    with _timer(times, "loop_sample_s"):  # the clean evaluation, then one per sampled head
        _, times["looped"] = loop_effects(
            model, metric, {h: edits[h] for h in sample}, progress=False
        )
    with (
        _timer(times, "naive_head_s"),
        hooked(model, edit_hooks(edits[sample[0]], sample[0].layer)),
    ):
        continuation_log_probs(model, pairs)  # full forwards, logits at every position
    with _timer(times, "attribution_s"):
        _, times["estimates"], _ = attribution_effects(model, metric, edits, progress=ctx.progress)
    return times


def _arithmetic(model, metric, edits, exact_s: float) -> dict[str, Any]:
    """The grid's matrix-product work against the loop's, and the fastest any exact
    schedule could run here."""
    from fasb_lens.ablation import exact_flops

    flops = exact_flops(model, metric, edits)
    loop_flops = (len(edits) + 1) * exact_flops(model, metric, {})  # a clean pass per head
    rate = matmul_gflops(model)
    return {
        "exact_gflop": round(flops / 1e9, 2),
        "exact_achieved_gflops": round(flops / 1e9 / exact_s, 1),
        "matmul_gflops": float(f"{rate:.3g}"),  # three figures: a slow machine reads well
        "exact_floor_s": round(flops / 1e9 / rate, 1),
        "exact_floor_note": (
            "the grid's matrix-product operations (exact_gflop, counted from the engine's "
            "schedule) divided by the best rate of a large matrix product in the model's dtype "
            "on this machine, measured in this run (matmul_gflops): no exact schedule of "
            "these positions can be faster here"
        ),
        "loop_gflop": round(loop_flops / 1e9, 2),
        "arithmetic_ratio": round(loop_flops / flops, 2),
        "arithmetic_ratio_note": (
            "loop_gflop counts the head-by-head loop the same way (a whole evaluation of the "
            "metric per head, on the engine's batching); arithmetic_ratio = loop_gflop / "
            "exact_gflop is the speedup the engine's saving in arithmetic alone gives"
        ),
    }


def bench_ablation(ctx: BenchContext) -> dict[str, Any]:
    """The full zero-ablation grid (every head) with ``logprob_margin`` on the first
    ``ablation_questions`` TruthfulQA questions: the exact engine against the head-by-head
    loop, and attribution patching for all heads.

    The loop is timed on ``loop_heads`` heads spread over the layers and extrapolated to
    every head (said so in ``loop_extrapolated_from_heads``); on those heads its values are
    compared with the engine's (``max_abs_difference``).
    """
    from fasb_lens.ablation import logprob_margin, make_edits, rank_correlation

    model = ctx.model
    name, questions = ctx.questions()
    questions = questions[: ctx.ablation_questions]
    metric = logprob_margin(model, questions)
    heads = model_shape(model).heads
    edits = make_edits(heads, "zero")
    n_layers = model.cfg.n_layers
    sample_layers = sorted({0, n_layers // 2, n_layers - 1})[: ctx.loop_heads]
    sample = [h for h in heads if h.layer in sample_layers and h.head == 0][: ctx.loop_heads]
    pairs = [
        (f"Q: {q.question} A:", f" {answer}")
        for q in questions
        for answer in (*q.correct_answers, *q.incorrect_answers)
    ]
    t = _timings(ctx, model, metric, edits, sample, pairs)
    baseline, exact = t["baseline"], t["exact"]
    per_call = t["loop_sample_s"] / (len(sample) + 1)
    loop_s, naive_s = per_call * (len(heads) + 1), t["naive_head_s"] * (len(heads) + 1)
    effects = {head: value - baseline for head, value in exact.items()}
    return {
        "dataset": name,
        "questions": len(metric.groups),
        "continuations": sum(len(g.continuations) for g in metric.groups),
        "heads": len(heads),
        "exact_s": t["exact_s"],
        **_arithmetic(model, metric, edits, t["exact_s"]),
        "loop_s": round(loop_s, 3),
        "loop_extrapolated_from_heads": [str(head) for head in sample],
        "loop_seconds_per_head": round(per_call, 2),
        "speedup": round(loop_s / t["exact_s"], 1),
        "naive_loop_s": round(naive_s, 3),
        "naive_loop_note": (
            "the loop with the metric computed the plain way (a full forward of every "
            "question+answer, logits at every position), timed on one head and extrapolated"
        ),
        "speedup_over_naive_loop": round(naive_s / t["exact_s"], 1),
        "attribution_s": t["attribution_s"],
        "attribution_rank_correlation": round(rank_correlation(effects, t["estimates"]), 4),
        "max_abs_difference": max(abs(t["looped"][h] - exact[h]) for h in sample),
        "baseline": baseline,
        "target_exact_s": 180,
        "target_speedup": 10,
        "target_attribution_s": 15,
    }
