"""Per-head studies: the exact engine equals the loop, attribution is the first-order change,
patching matches a hand-made patch, grids resume and save, bad input is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fasb_lens import tree_forward
from fasb_lens._types import Head
from fasb_lens.ablation import (
    AblationGrid,
    LogProbMetric,
    ScoredGroup,
    ablated,
    ablation_study,
    attribution_effects,
    exact_effects,
    exact_flops,
    fasb_heads_study,
    logprob_margin,
    loop_effects,
    make_edits,
    mc2_metric,
    p_true_metric,
    patching_effects,
    probe_accuracy_metric,
    rank_correlation,
    truthfulqa_pairs,
)
from fasb_lens.ablation import attribution as attribution_module
from fasb_lens.ablation.layout import Layout
from fasb_lens.anchoring import build_steering
from fasb_lens.data import load_mini_truthfulqa, load_prompt_format, probing_prompts
from fasb_lens.models import forward, hook_z_name, model_shape, tokenize
from fasb_lens.policies import FASB
from fasb_lens.storage import ABLATION_LOG
from fasb_lens.tree_forward import length_bins

QUESTIONS = load_mini_truthfulqa()[:3]


def z_of(model, layer: int) -> torch.Tensor:
    seen = {}
    ids = torch.tensor(tokenize(model, ["Q: Is the sky blue? A: Yes."]))

    def keep(z, hook):
        seen["z"] = z.clone()
        return z

    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook_z_name(layer), keep)]):
        forward(model, ids)
    return seen["z"]


def test_zero_and_mean_ablation_change_only_their_head(tiny_llama) -> None:
    plain = z_of(tiny_llama, 2)
    with ablated(tiny_llama, [Head(2, 1)]):
        zeroed = z_of(tiny_llama, 2)
    assert torch.equal(zeroed[:, :, 1], torch.zeros_like(zeroed[:, :, 1]))
    others = [0, 2, 3]
    assert torch.equal(zeroed[:, :, others], plain[:, :, others])
    means = torch.randn(4, 4, 16)
    with ablated(tiny_llama, [Head(2, 1)], kind="mean", means=means):
        averaged = z_of(tiny_llama, 2)
    assert torch.equal(averaged[0, :, 1], means[2, 1].expand(averaged.shape[1], -1))
    assert torch.equal(z_of(tiny_llama, 2), plain)  # the hook is gone afterwards
    with pytest.raises(ValueError, match="mean ablation needs"):
        with ablated(tiny_llama, [Head(0, 0)], kind="mean"):
            pass


def test_logprob_margin_by_hand(tiny_llama) -> None:
    question = QUESTIONS[0]
    metric = logprob_margin(tiny_llama, [question])

    def log_prob(answer: str) -> float:
        prefix = tokenize(tiny_llama, [f"Q: {question.question} A:"])[0]
        cont = tokenize(tiny_llama, [f" {answer}"], prepend_bos=False)[0]
        with torch.inference_mode():
            logits = forward(tiny_llama, torch.tensor([prefix + cont]))[0]
        lp = torch.log_softmax(logits, -1)
        return sum(float(lp[len(prefix) - 1 + t, tok]) for t, tok in enumerate(cont))

    true = [log_prob(a) for a in question.correct_answers]
    false = [log_prob(a) for a in question.incorrect_answers]
    expected = sum(true) / len(true) - sum(false) / len(false)
    assert metric(tiny_llama) == pytest.approx(expected, abs=1e-4)


def test_length_bins_cover_every_answer_once() -> None:
    lengths = [5, 12, 3, 12, 4, 30, 6]
    for cost in (0, 4, 24, 1000):
        bins = length_bins(lengths, cost)
        assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
        assert all(
            max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in pairwise(bins)
        )
    assert len(length_bins(lengths, 0)) == len(set(lengths))  # free bins: one per length
    assert len(length_bins(lengths, 1000)) == 1  # costly bins: one padded batch
    assert length_bins([], 24) == []
    assert sorted(len(b) for b in length_bins([3] * 7, 1000, max_rows=3)) == [1, 3, 3]


@pytest.mark.parametrize("bin_cost", [0, 1000])  # many bins, one bin
@pytest.mark.parametrize("metric_name", ["logprob_margin", "mc2"])
def test_exact_engine_equals_the_loop(tiny_model, metric_name, bin_cost, monkeypatch) -> None:
    monkeypatch.setattr(tree_forward, "BIN_COST", bin_cost)
    if metric_name == "logprob_margin":
        metric = logprob_margin(tiny_model, QUESTIONS)
    else:
        metric = mc2_metric(tiny_model, QUESTIONS[:2], fmt=load_prompt_format())
    edits = make_edits(model_shape(tiny_model).heads, "zero")
    baseline, loop = loop_effects(tiny_model, metric, edits, progress=False)
    clean, exact = exact_effects(tiny_model, metric, edits, max_rows=12, progress=False)
    assert clean == pytest.approx(baseline, abs=1e-4)
    scale = max(abs(value) for value in loop.values())
    assert all(exact[h] == pytest.approx(loop[h], abs=1e-4 * max(1.0, scale)) for h in loop)
    assert len({round(v, 6) for v in loop.values()}) > 4  # the heads do differ


def test_exact_flops_counts_what_the_engine_runs(tiny_model) -> None:
    """The grid's operation count (the floor the benchmark divides by a matrix-product
    rate) matches the matrix-product operations torch counts while the engine runs; the
    rest (rotary tables) is a fraction of a percent."""
    metric = logprob_margin(tiny_model, QUESTIONS)
    edits = make_edits(model_shape(tiny_model).heads, "zero")
    with FlopCounterMode(display=False) as counter:
        exact_effects(tiny_model, metric, edits, max_rows=12, progress=False)
    expected = exact_flops(tiny_model, metric, edits, max_rows=12)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.005)
    one = {head: edits[head] for head in list(edits)[:1]}
    assert exact_flops(tiny_model, metric, one, max_rows=12) < expected / 2


def test_exact_engine_with_prompts_of_any_length(tiny_model) -> None:
    """Groups whose prefix is a single token (no prompt to cache) beside long ones, and
    groups of one answer: the left-padded prompt batch changes no number."""
    prompt = tuple(tokenize(tiny_model, ["Q: Is the sky blue? A:"], prepend_bos=True)[0])
    texts = [" Yes", " No, it is green", " Maybe", " No, it is blue"]
    yes, no, maybe, blue = (tuple(ids) for ids in tokenize(tiny_model, texts, prepend_bos=False))
    shared = next(i for i, (a, b) in enumerate(zip(no, blue, strict=False)) if a != b)
    assert shared >= 2  # answers that begin alike share those tokens in the tree
    groups = (
        ScoredGroup(prompt, (yes, no, maybe, blue)),
        ScoredGroup(prompt[:1], (no,)),
        ScoredGroup(prompt[:4], (yes, maybe)),
    )
    metric = LogProbMetric("sum", groups, lambda values: torch.cat(values).sum())
    edits = make_edits(model_shape(tiny_model).heads, "zero")
    baseline, loop = loop_effects(tiny_model, metric, edits, progress=False)
    clean, exact = exact_effects(tiny_model, metric, edits, max_rows=5, progress=False)
    assert clean == pytest.approx(baseline, abs=1e-4)
    assert all(exact[h] == pytest.approx(loop[h], abs=1e-4) for h in loop)


def test_layout_scores_like_the_prefix_scorer(tiny_model) -> None:
    metric = logprob_margin(tiny_model, QUESTIONS)
    layout = Layout.build(tiny_model, metric.groups, bin_rows=4)
    assert sorted(int(i) for b in layout.bins for i in b.place) == list(range(sum(layout.sizes)))
    with torch.inference_mode():
        values, cache = layout.run(tiny_model)
    for mine, reference in zip(
        layout.gather(values), metric.group_log_probs(tiny_model), strict=True
    ):
        assert torch.allclose(mine, reference, atol=1e-4)
    lengths = [len(group.prefix) - 1 for group in metric.groups]
    positions = layout.prompt_positions()
    for g, length in enumerate(lengths):  # left-padded: the last column is position length - 1
        assert positions[g, -1] == length - 1 and int(layout.prompt_mask[g].sum()) == length
    answers = layout.bins[0]
    starts = torch.tensor(lengths)[answers.group]
    assert torch.equal(layout.answer_positions(answers)[:, 0], starts)
    assert cache is not None and cache[0][0].shape[0] == len(metric.groups)


def test_every_kind_and_readout_metrics_equal_the_loop(tiny_llama, tiny_anchoring) -> None:
    anchoring = tiny_anchoring
    heads = [Head(0, 1), Head(1, 3), Head(2, 0), Head(3, 2)]
    steering = build_steering(
        anchoring.probes, anchoring.activations, anchoring.tuning, heads=heads
    )
    prompts = probing_prompts(QUESTIONS)
    metrics = [
        logprob_margin(tiny_llama, QUESTIONS[:2]),
        p_true_metric(tiny_llama, prompts, anchoring.steering),
        probe_accuracy_metric(tiny_llama, prompts, anchoring.probes, [Head(2, 1), Head(3, 0)]),
    ]
    kinds = {
        "mean": {"means": anchoring.activations.z.mean(0)},
        "resample": {"reference": anchoring.activations, "samples": 2, "seed": 3},
        "steer": {"steering": steering, "strength": 4.0},
    }
    for metric in metrics:
        for kind, options in kinds.items():
            edits = make_edits(heads, kind, **options)
            _, loop = loop_effects(tiny_llama, metric, edits, progress=False)
            _, exact = exact_effects(tiny_llama, metric, edits, max_rows=7, progress=False)
            for head in heads:
                assert exact[head] == pytest.approx(loop[head], abs=1e-4), (metric.name, kind)
    draws = make_edits(heads, "resample", reference=anchoring.activations, samples=3, seed=3)
    again = make_edits(heads, "resample", reference=anchoring.activations, samples=3, seed=3)
    assert all(
        torch.equal(a.value, b.value)
        for h in heads
        for a, b in zip(draws[h], again[h], strict=True)
    )


def test_attribution_is_the_first_order_change(tiny_llama, tiny_anchoring, monkeypatch) -> None:
    """For a small push the exact change and the estimate agree; for zero ablation the
    estimate ranks the heads like the exact grid."""
    anchoring = tiny_anchoring
    heads = model_shape(tiny_llama).heads
    steering = build_steering(
        anchoring.probes, anchoring.activations, anchoring.tuning, heads=heads
    )
    for metric in (
        logprob_margin(tiny_llama, QUESTIONS[:2]),
        p_true_metric(tiny_llama, probing_prompts(QUESTIONS), anchoring.steering),
    ):
        push = make_edits(heads, "steer", steering=steering, strength=0.2)
        pull = make_edits(heads, "steer", steering=steering, strength=-0.2)
        baseline, pushed = exact_effects(tiny_llama, metric, push, progress=False)
        _, pulled = exact_effects(tiny_llama, metric, pull, progress=False)
        clean, estimate, by_position = attribution_effects(
            tiny_llama, metric, push, per_position=True, progress=False
        )
        assert clean == pytest.approx(baseline, abs=1e-5)
        for head in heads:  # the central difference cancels the second-order term
            change = (pushed[head] - pulled[head]) / 2
            assert estimate[head] == pytest.approx(change, rel=0.02, abs=1e-6), (metric.name, head)
            assert float(by_position[head].sum()) == pytest.approx(estimate[head], abs=1e-9)
    zero = make_edits(heads, "zero")
    metric = logprob_margin(tiny_llama, QUESTIONS[:2])
    baseline, exact = exact_effects(tiny_llama, metric, zero, progress=False)
    _, estimate, _ = attribution_effects(tiny_llama, metric, zero, progress=False)
    effects = {head: value - baseline for head, value in exact.items()}
    assert rank_correlation(effects, estimate) > 0.5
    monkeypatch.setattr(attribution_module, "ATTRIBUTION_TOKENS", 1)  # one question per batch
    _, one_by_one, _ = attribution_effects(tiny_llama, metric, zero, progress=False)
    assert all(one_by_one[h] == pytest.approx(estimate[h], rel=1e-4, abs=1e-7) for h in heads)
    opaque = replace(metric, group_term=None)  # any reduction: a clean pass, then weights
    value, weighted, _ = attribution_effects(tiny_llama, opaque, zero, progress=False)
    assert value == pytest.approx(baseline, abs=1e-5)
    assert all(weighted[h] == pytest.approx(estimate[h], rel=1e-4, abs=1e-7) for h in heads)
    accuracy = probe_accuracy_metric(
        tiny_llama, probing_prompts(QUESTIONS), anchoring.probes, [Head(3, 0)]
    )
    with pytest.raises(ValueError, match="not differentiable"):
        attribution_effects(tiny_llama, accuracy, zero, progress=False)


def test_patching_matches_a_hand_made_patch(tiny_llama, tiny_anchoring) -> None:
    steering = tiny_anchoring.steering
    pairs = truthfulqa_pairs(QUESTIONS)
    result = patching_effects(tiny_llama, pairs, steering=steering)
    assert result.values.shape == (4, 4, len(pairs))
    tracker = steering.tracker()

    def reading(text: str, patch=None) -> float:
        ids = torch.tensor(tokenize(tiny_llama, [text]))
        seen = {}

        def keep(layer):
            def hook(z, hook):
                if patch is not None and patch[0] == layer:
                    z = z.clone()
                    z[0, -1, patch[1]] = patch[2]
                seen[layer] = z[0, -1]
                return z

            return hook

        layers = sorted({h.layer for h in steering.heads} | ({patch[0]} if patch else set()))
        hooks = [(hook_z_name(layer), keep(layer)) for layer in layers]
        with torch.inference_mode(), tiny_llama.hooks(fwd_hooks=hooks):
            forward(tiny_llama, ids)
        z = torch.stack([seen[h.layer][h.head] for h in steering.heads])
        return float(tracker.p_true(z))

    def clean_z(text: str, head: Head) -> torch.Tensor:
        ids = torch.tensor(tokenize(tiny_llama, [text]))
        seen = {}

        def hook(z, hook):
            seen["z"] = z[0, -1, head.head].clone()
            return z

        with torch.inference_mode(), tiny_llama.hooks(fwd_hooks=[(hook_z_name(head.layer), hook)]):
            forward(tiny_llama, ids)
        return seen["z"]

    clean, corrupted = pairs[1]
    assert float(result.clean[1]) == pytest.approx(reading(clean), abs=1e-5)
    assert float(result.corrupted[1]) == pytest.approx(reading(corrupted), abs=1e-5)
    for head in (steering.heads[0], Head(0, 2)):
        patched = reading(corrupted, (head.layer, head.head, clean_z(clean, head)))
        assert float(result.values[head.layer, head.head, 1]) == pytest.approx(patched, abs=1e-5)
    assert result.effect.shape == (4, 4) and torch.isfinite(result.recovered).all()


def test_patching_can_be_silent(tiny_llama, tiny_anchoring, capsys) -> None:
    pairs = truthfulqa_pairs(QUESTIONS[:2])
    steering = tiny_anchoring.steering
    loud = patching_effects(tiny_llama, pairs, steering=steering)
    assert "it/s" in capsys.readouterr().err  # TransformerLens' own bar over the heads
    quiet = patching_effects(tiny_llama, pairs, steering=steering, progress=False)
    assert "it/s" not in capsys.readouterr().err
    assert torch.equal(loud.values, quiet.values)


def test_study_grid_saves_and_resumes(tiny_llama, tmp_path) -> None:
    metric = logprob_margin(tiny_llama, QUESTIONS)
    heads = [Head(0, 0), Head(1, 2), Head(3, 3)]
    grid = ablation_study(tiny_llama, metric, heads=heads, out=tmp_path, progress=False)
    assert grid.effect.shape == (4, 4) and int((~grid.effect.isnan()).sum()) == 3
    with ablated(tiny_llama, [Head(1, 2)]):
        expected = metric(tiny_llama) - grid.baseline
    assert float(grid.effect[1, 2]) == pytest.approx(expected, abs=1e-4)
    assert [head for head, _ in grid.top(3)] == sorted(heads, key=lambda h: float(grid.effect[h]))
    assert len((tmp_path / ABLATION_LOG).read_text().splitlines()) == 4
    loaded = AblationGrid.load(tmp_path, grid.name)
    assert torch.equal(loaded.values.nan_to_num(7), grid.values.nan_to_num(7))
    assert (loaded.metric, loaded.kind, loaded.estimator) == ("logprob_margin", "zero", "exact")
    more = [*heads, Head(2, 1)]
    calls: list[int] = []
    import fasb_lens.ablation.study as study

    real = study.exact_effects

    def counting(model, metric, edits, **kwargs):
        calls.append(len(edits))
        return real(model, metric, edits, **kwargs)

    study.exact_effects = counting
    try:
        again = ablation_study(tiny_llama, metric, heads=more, out=tmp_path, progress=False)
    finally:
        study.exact_effects = real
    assert calls == [1]  # only the new head was computed
    assert float(again.effect[1, 2]) == pytest.approx(float(grid.effect[1, 2]), abs=1e-9)


def test_study_resumes_a_log_written_before_estimators_had_their_name(tiny_llama, tmp_path) -> None:
    metric = logprob_margin(tiny_llama, QUESTIONS)
    heads = [Head(0, 0), Head(2, 1)]
    grid = ablation_study(tiny_llama, metric, heads=heads, out=tmp_path, progress=False)
    log = tmp_path / ABLATION_LOG
    old = [json.loads(line) for line in log.read_text().splitlines()]
    for record in old:
        record["method"] = record.pop("estimator")
    log.write_text("".join(json.dumps(record) + "\n" for record in old))
    import fasb_lens.ablation.study as study

    real, study.exact_effects = study.exact_effects, None  # nothing may be recomputed
    try:
        again = ablation_study(tiny_llama, metric, heads=heads, out=tmp_path, progress=False)
    finally:
        study.exact_effects = real
    assert torch.equal(again.values.nan_to_num(7), grid.values.nan_to_num(7))


def test_which_heads_matter_for_fasb(tiny_llama, tiny_anchoring) -> None:
    steering = tiny_anchoring.steering
    rows = fasb_heads_study(
        tiny_llama,
        steering,
        QUESTIONS[:2],
        fmt=load_prompt_format(),
        policy=FASB(alpha=4.0, threshold=0.6, backtrack_tokens=2),
        heads=list(steering.heads[:2]),
        source="csv",
        progress=False,
    )
    assert [row["head"] for row in rows] == ["clean", *map(str, steering.heads[:2])]
    for row in rows:
        assert 0 <= row["mc2"] <= 1 and 0 <= row["triggered"] <= 1 and 0 <= row["p_true"] <= 1


def test_bad_input(tiny_llama, tiny_anchoring) -> None:
    metric = logprob_margin(tiny_llama, QUESTIONS[:1])
    with pytest.raises(ValueError, match=r"head L9H0 does not exist in a model with 4 layers"):
        ablation_study(tiny_llama, metric, heads=[Head(9, 0)], progress=False)
    with pytest.raises(ValueError, match="mean ablation needs"):
        ablation_study(tiny_llama, metric, kind="mean", progress=False)
    with pytest.raises(ValueError, match="resample ablation needs reference"):
        make_edits([Head(0, 0)], "resample")
    with pytest.raises(ValueError, match="ablation kind must be one of"):
        make_edits([Head(0, 0)], "shuffle")  # type: ignore[arg-type]
    anchoring = tiny_anchoring
    two = build_steering(
        anchoring.probes, anchoring.activations, anchoring.tuning, heads=[Head(0, 1), Head(1, 0)]
    )
    with pytest.raises(ValueError, match="no vector for L2H2"):
        make_edits([Head(2, 2)], "steer", steering=two)
    with pytest.raises(ValueError, match="estimator must be one of"):
        ablation_study(tiny_llama, metric, estimator="magic", progress=False)


@pytest.mark.slow
def test_exact_engine_on_the_default_model(default_model, data_dir) -> None:
    from fasb_lens.data import load_truthfulqa

    questions = load_truthfulqa(data_dir / "truthfulqa")[:2]
    metric = logprob_margin(default_model, questions)
    heads = [Head(0, 3), Head(14, 0), Head(29, 8)]
    edits = make_edits(heads, "zero")
    _, loop = loop_effects(default_model, metric, edits, progress=False)
    _, exact = exact_effects(default_model, metric, edits, progress=False)
    for head in heads:
        assert exact[head] == pytest.approx(loop[head], abs=1e-4)
