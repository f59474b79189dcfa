"""The speed entries: activations, probes, generation, multiple choice, attention (the
ablation grid is :mod:`fasb_lens.bench.ablation`)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch

from fasb_lens.activations import collect_head_activations
from fasb_lens.anchoring import anchor_heads
from fasb_lens.bench.context import BenchContext, _prompt_format, _timer
from fasb_lens.data import load_mini_truthfulqa
from fasb_lens.generation import GenerationConfig, GenerationTrace, generate
from fasb_lens.logprobs import continuation_log_probs
from fasb_lens.models import (
    bridge_attention,
    dtype_name,
    forward,
    hook_z_name,
    model_shape,
    pad,
    pad_token_id,
    tokenize,
)
from fasb_lens.multiple_choice import MultipleChoice, evaluate_mc
from fasb_lens.policies import FASB, ITI, Unsteered
from fasb_lens.probes import fit_head_probes
from fasb_lens.scoring import ROWS, AnswerScore, score_together
from fasb_lens.splits import authors_folds, train_val_split
from fasb_lens.steering import Steering


def bench_activations(ctx: BenchContext) -> dict[str, Any]:
    """Head-activation collection vs a plain forward pass over the same batches.

    Three timings over the same prompts: fasb_lens' collection (batches as token trees,
    last-token gathering in the hook, forward stopped after the last ``hook_z``); a plain
    forward (logits) over padded batches of the same size, sorted by length so that little
    is padded; and the naive way (batches of 32 in
    the given order, ``run_with_cache`` on every ``hook_z``, full forward, then slicing).
    """
    model = ctx.model
    dataset, prompts = ctx.probing_prompts()
    texts = [prompt.text for prompt in prompts]
    token_lists = tokenize(model, texts)
    order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
    pad_id = pad_token_id(model)
    names = {hook_z_name(layer) for layer in range(model.cfg.n_layers)}
    times: dict[str, float] = {}

    def plain_forward() -> None:
        with torch.inference_mode():
            for start in range(0, len(order), ctx.batch_size):
                ids, mask = pad(
                    [token_lists[i] for i in order[start : start + ctx.batch_size]], pad_id=pad_id
                )
                forward(model, ids, mask)

    def naive(batch_size: int = 32) -> None:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = token_lists[start : start + batch_size]
                ids, mask = pad(rows, pad_id=pad_id)
                _, cache = model.run_with_cache(
                    ids, attention_mask=mask, names_filter=lambda name: name in names
                )
                last = mask.sum(dim=1) - 1
                torch.stack([cache[name][torch.arange(len(rows)), last] for name in names], 1)

    collect_head_activations(model, prompts[: ctx.batch_size], progress=False)  # warm-up
    with _timer(times, "collect_s"):
        collect_head_activations(model, prompts, batch_size=ctx.batch_size, progress=ctx.progress)
    with _timer(times, "plain_forward_s"):
        plain_forward()
    with _timer(times, "naive_s"):
        naive()
    return {
        "dataset": dataset,
        "n_prompts": len(prompts),
        "mean_tokens": round(sum(map(len, token_lists)) / len(token_lists), 1),
        "batch_size": ctx.batch_size,
        **times,
        "collect_over_forward": round(times["collect_s"] / times["plain_forward_s"], 3),
        "target_collect_over_forward": 1.3,
        "speedup_over_naive": round(times["naive_s"] / times["collect_s"], 2),
    }


def bench_probes(ctx: BenchContext) -> dict[str, Any]:
    """All-head probes: the batched torch engine vs scikit-learn head by head.

    Both fit every head on the training questions of the authors' first fold (all
    TruthfulQA probing prompts: about 6,000 rows of 64 features per head) and are
    validated on its validation questions; reports both times, the ratio and the largest
    per-head difference in validation accuracy.
    """
    dataset, order, activations = ctx.all_probing_activations()
    split = authors_folds(order)[0]
    rows = {side: split.rows(activations.groups, side) for side in ("train", "val")}
    times: dict[str, float] = {}
    fitted = {}
    for engine in ("torch", "sklearn"):
        with _timer(times, f"{engine}_s"):
            fitted[engine] = fit_head_probes(
                activations,
                train_idx=rows["train"],
                val_idx=rows["val"],
                engine=engine,
                progress=ctx.progress,
            )
    ours, reference = fitted["torch"], fitted["sklearn"]
    gap = (ours.val_accuracy - reference.val_accuracy).abs()
    return {
        "dataset": dataset,
        "heads": int((~ours.val_accuracy.isnan()).sum()),
        "train_rows": len(rows["train"]),
        "val_rows": len(rows["val"]),
        "features": activations.shape.d_head,
        **times,
        "speedup_torch_over_sklearn": round(times["sklearn_s"] / times["torch_s"], 1),
        "target_speedup": 10,
        "max_val_accuracy_difference": round(float(gap.max()), 4),
        "target_max_val_accuracy_difference": 0.01,
        "heads_with_different_val_accuracy": int((gap > 0).sum()),
        "val_majority_baseline": round(ours.val_majority, 4),
        "best_heads": ours.summary(5)["best_heads"],
    }


def _bench_steering(ctx: BenchContext) -> Steering:
    """A steering artifact for the benchmarks, anchored on the mini set."""
    questions = load_mini_truthfulqa()
    split = train_val_split([question.id for question in questions])
    top_k = min(24, len(model_shape(ctx.model).heads))  # a tiny test model has fewer heads
    return anchor_heads(ctx.model, questions, split, top_k=top_k, progress=ctx.progress).steering


def _generation_prompts(ctx: BenchContext, n: int) -> list[str]:
    """Instruction + six-shot QA primer + a question (about 230 tokens on SmolLM2)."""
    _, questions = ctx.questions()
    fmt = _prompt_format(ctx)
    return [fmt.generation_prompt(question.question) for question in questions[:n]]


def bench_generation(ctx: BenchContext) -> dict[str, Any]:
    """FASB generation: cached vs the authors' recompute loop, the price of tracking, batching.

    50 new tokens, greedy, stopping only at EOS or the budget so every run decodes the
    same number of steps. ``threshold`` 1.1 makes FASB trigger at its first check
    (backtracking 10 tokens), ``threshold`` 0 makes it track without ever triggering.
    """
    steering = _bench_steering(ctx)
    prompts = _generation_prompts(ctx, 8)
    lengths = [len(ids) for ids in tokenize(ctx.model, prompts)]
    config = GenerationConfig(max_new_tokens=50)
    triggering = FASB(alpha=4.0, threshold=1.1, backtrack_tokens=10)
    silent = FASB(alpha=4.0, threshold=0.0, backtrack_tokens=10)
    times: dict[str, float] = {}
    tokens: dict[str, int] = {}

    def run(key: str, batches: list[list[str]], policy, mode: str = "cached") -> list:
        traces: list[GenerationTrace] = []
        with _timer(times, key):
            for batch in batches:
                traces += generate(
                    ctx.model,
                    batch,
                    policy=policy,
                    steering=steering,
                    config=replace(config, mode=mode),
                )
        tokens[key] = sum(len(trace.steps) for trace in traces)
        return traces

    generate(ctx.model, prompts[:1], config=GenerationConfig(max_new_tokens=2))  # warm-up
    alone = [[prompt] for prompt in prompts]
    run("fasb_cached_s", [prompts[:2]], triggering)
    run("fasb_reference_s", [prompts[:2]], triggering, mode="reference")
    one_by_one = run("fasb_one_by_one_8_s", alone, triggering)
    batched = run("fasb_batched_8_s", [prompts], triggering)
    run("plain_cached_8_s", alone, Unsteered())
    run("silent_cached_8_s", alone, silent)
    same = [a.output_ids for a in one_by_one] == [b.output_ids for b in batched]
    return {
        "prompt_tokens": {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
        "prompts": [prompt[-120:] for prompt in prompts],
        "max_new_tokens": config.max_new_tokens,
        "anchored_heads": steering.top_k,
        **times,
        "tokens_per_second": {
            key.removesuffix("_s"): round(tokens[key] / times[key], 2) for key in tokens
        },
        "cached_speedup_over_reference": round(
            times["fasb_reference_s"] / times["fasb_cached_s"], 2
        ),
        "target_cached_speedup": 8,
        "tracking_cost_ratio": round(times["silent_cached_8_s"] / times["plain_cached_8_s"], 3),
        "target_tracking_cost_ratio": 1.25,
        "batched_speedup_over_one_by_one": round(
            times["fasb_one_by_one_8_s"] / times["fasb_batched_8_s"], 2
        ),
        "target_batched_speedup": 2,
        "batched_tokens_equal_one_by_one": same,
    }


def _mc_source(questions) -> str:
    """Where the benchmarks take multiple-choice answers: ``mc_task.json``'s when the
    questions carry them, else the CSV's."""
    return "mc_task" if questions[0].mc1_targets else "csv"


def bench_mc(ctx: BenchContext) -> dict[str, Any]:
    """TruthfulQA multiple choice: the prefix-cached, batched scorer vs one full forward per
    answer, on the same questions and answers; reports both times, the ratio and the largest
    difference between the two sets of log-probabilities."""
    name, questions = ctx.questions()
    questions = questions[: ctx.mc_questions]
    fmt = _prompt_format(ctx)
    source = _mc_source(questions)
    policy = {"none": Unsteered()}
    times: dict[str, float] = {}
    fast: list[float] = []
    pairs: list[tuple[str, str]] = []
    evaluate_mc(ctx.model, questions[0], policy, fmt=fmt, source=source)  # warm-up
    with _timer(times, "cached_batched_s"):
        for question in questions:
            rows = evaluate_mc(ctx.model, question, policy, fmt=fmt, source=source)["none"]
            prefix, _ = fmt.answer_prompt(question.question, "")
            for row in rows["answers"]:
                fast.append(row["log_prob"])
                pairs.append((prefix, " " + row["answer"]))
    with _timer(times, "naive_s"):
        naive = continuation_log_probs(ctx.model, pairs, batch_size=1)
    gap = max(abs(a - b) for a, b in zip(fast, naive, strict=True))
    return {
        "dataset": name,
        "questions": len(questions),
        "answers_scored": len(pairs),
        **times,
        "speedup": round(times["naive_s"] / times["cached_batched_s"], 2),
        "target_speedup": 5,
        "max_abs_log_prob_difference": gap,
        **_questions_together(ctx, questions, fmt, source),
    }


def _questions_together(ctx: BenchContext, questions, fmt, source: str) -> dict[str, Any]:
    """A calibration round on the same questions (FASB at three strengths, ITI, and the
    unsteered pass they share), each question's forwards alone against the questions'
    trees as rows of shared forwards (:func:`~fasb_lens.scoring.score_together`)."""
    steering = _bench_steering(ctx)
    policies = {
        **{
            f"fasb {alpha}": FASB(alpha=alpha, threshold=0.5, backtrack_tokens=10)
            for alpha in (8.0, 32.0, 128.0)
        },
        "fixed": ITI(alpha=4.0),
    }
    times: dict[str, float] = {}
    results = {}
    for key, rows in (("questions_alone_s", 1), ("questions_together_s", ROWS)):
        items = [
            MultipleChoice(ctx.model, q, fmt=fmt, steering=steering, source=source, answer_offset=1)
            for q in questions
        ]
        with _timer(times, key):
            scored = score_together(
                [item.job(list(policies.values())) for item in items], rows=rows
            )
        results[key] = [
            a.log_prob for per_item in scored for per_policy in per_item for a in per_policy
        ]
    alone, together = results["questions_alone_s"], results["questions_together_s"]
    return {
        **times,
        "questions_rows": ROWS,
        "questions_together_speedup": round(
            times["questions_alone_s"] / times["questions_together_s"], 2
        ),
        "questions_together_max_abs_difference": max(
            abs(a - b) for a, b in zip(alone, together, strict=True)
        ),
    }


def bench_attention(ctx: BenchContext) -> dict[str, Any]:
    """The fast attention (:func:`~fasb_lens.models.fast_attention`) against the bridge's
    own, side by side, in the model's dtype: one batch of 64 evaluation prompts generated
    greedily (30 new tokens, unsteered) and a calibration round of multiple choice (FASB at
    three strengths and ITI on ``mc_questions`` questions, questions scored together);
    with how many generated tokens agree and the largest log-probability difference, over
    all answers and over those whose trigger decision (steered or not, from which token) is
    the same under both: a decision flipped by rounding near the threshold moves an answer's
    log-probability by the steering's whole effect, which says nothing about the attention."""
    steering = _bench_steering(ctx)
    prompts = _generation_prompts(ctx, 64)
    _, questions = ctx.questions()
    fmt = _prompt_format(ctx)
    source = _mc_source(questions)
    policies = [FASB(alpha=a, threshold=0.5, backtrack_tokens=10) for a in (8.0, 32.0, 128.0)]
    policies.append(ITI(alpha=4.0))
    config = GenerationConfig(max_new_tokens=30)
    generate(ctx.model, prompts[:1], config=GenerationConfig(max_new_tokens=2))  # warm-up
    times: dict[str, float] = {}
    tokens, answers = {}, {}
    for key, switch in (("bridge", bridge_attention), ("fast", nullcontext)):
        with switch():
            with _timer(times, f"generation_{key}_s"):
                traces = generate(ctx.model, prompts, config=config)
            tokens[key] = [trace.output_ids for trace in traces]
            items = [
                MultipleChoice(ctx.model, q, fmt=fmt, steering=steering, source=source)
                for q in questions[: ctx.mc_questions]
            ]
            with _timer(times, f"mc_{key}_s"):
                scored = score_together([item.job(policies) for item in items])
            answers[key] = [a for item in scored for per in item for a in per]
    pairs = list(zip(tokens["bridge"], tokens["fast"], strict=True))
    scores = list(zip(answers["bridge"], answers["fast"], strict=True))
    same = [(a, b) for a, b in scores if _decision(a) == _decision(b)]
    return {
        "dtype": dtype_name(ctx.model),
        "prompts": len(prompts),
        "mc_questions": len(items),
        **times,
        "generation_speedup": round(times["generation_bridge_s"] / times["generation_fast_s"], 2),
        "mc_speedup": round(times["mc_bridge_s"] / times["mc_fast_s"], 2),
        "generation_same_tokens": round(sum(a == b for a, b in pairs) / len(pairs), 3),
        "mc_max_abs_log_prob_difference": _max_difference(scores),
        "mc_decisions_differing": len(scores) - len(same),
        "mc_answers": len(scores),
        "mc_max_abs_log_prob_difference_same_decision": _max_difference(same),
    }


def _decision(score: AnswerScore) -> tuple[bool, int | None]:
    """What a policy decided for one answer: whether it was steered, and from which token."""
    return score.triggered, score.trigger_token


def _max_difference(pairs: list[tuple[AnswerScore, AnswerScore]]) -> float:
    return max((abs(a.log_prob - b.log_prob) for a, b in pairs), default=0.0)
