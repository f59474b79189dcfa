"""Figures are pure functions: inspect the figure objects, never the pixels."""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.generation import GenerationTrace, Step
from fasb_lens.plotting import (
    anchored_heads,
    dataset_accuracies,
    dataset_sweeps,
    grid_comparison,
    head_heatmap,
    method_comparison,
    p_true_distributions,
    save_figure,
    sweep_lines,
    trajectories,
    trajectory,
)
from fasb_lens.plotting.style import policy_color
from fasb_lens.run_figures import render_run


def make_trace(
    p_true: list[float], *, policy: str = "fasb", trigger: int | None = None, dropped: int = 0
) -> GenerationTrace:
    steps = [Step(i, 100 + i, f"t{i}", p, 0.0) for i, p in enumerate(p_true)]
    backtracks = []
    if trigger is not None:
        for step in steps[trigger - dropped + 1 : trigger + 1]:
            step.kept = False
        backtracks = [
            {
                "step": trigger,
                "p_true": p_true[trigger],
                "strength": 2.0,
                "kept_tokens": trigger + 1 - dropped,
                "discarded_ids": list(range(dropped)),
            }
        ]
    return GenerationTrace(
        prompt="Q",
        prompt_ids=[1],
        output_ids=[],
        text=" yes",
        answer="yes",
        policy=policy,
        mode="cached",
        steps=steps,
        trigger_step=trigger,
        backtracks=backtracks,
    )


def test_head_heatmap() -> None:
    values = torch.tensor([[0.5, 0.7, float("nan")], [0.9, 0.6, 0.8]])
    figure = head_heatmap(values, anchored=[Head(1, 0), Head(0, 1)], extra={"train": values + 0.01})
    heat = figure.data[0]
    assert isinstance(heat, go.Heatmap) and len(heat.z) == 2 and len(heat.z[0]) == 3
    assert heat.z[0][2] is None  # an unfitted head stays blank
    assert "layer 1, head 0" in heat.text[1][0] and "train: 91.0%" in heat.text[1][0]
    assert heat.z[1][0] == pytest.approx(90.0)  # accuracy in percent
    assert heat.colorbar.title.text == "accuracy (%)"
    rects = [(s.x0, s.y0) for s in figure.layout.shapes if s.name == "anchored"]
    assert rects == [(-0.5, 0.5), (0.5, -0.5)]
    assert figure.layout.xaxis.title.text == "head" and figure.layout.yaxis.title.text == "layer"
    ranked = head_heatmap(values, anchored=[Head(1, 2)], sort_within_layer=True)
    assert ranked.data[0].z[1] == pytest.approx([90.0, 80.0, 60.0])
    assert ranked.layout.shapes[0].x0 == 0.5  # head 2 is second in its layer once sorted
    assert "layer 1, head 2" in ranked.data[0].text[1][1]


def test_head_heatmap_outlines_stand_out_on_a_diverging_scale() -> None:
    """Anchored heads: a dark outline over a white halo, never red (a red outline
    vanishes on the red cells of RdBu); the scale is symmetric about its centre."""
    effect = torch.tensor([[0.5, -1.0], [0.2, 0.1]])
    figure = head_heatmap(effect, anchored=[Head(0, 1)], zmid=0.0, colorbar="change in margin")
    heat = figure.data[0]
    assert heat.colorscale[0][1] != heat.colorscale[-1][1] and (heat.zmin, heat.zmax) == (-1, 1)
    assert heat.z[0][0] == pytest.approx(0.5)  # an effect is not a fraction: not in percent
    halo, outline = figure.layout.shapes
    assert (halo.line.color, outline.line.color) == ("white", "#111111")
    assert halo.line.width > outline.line.width and (halo.x0, halo.y0) == (outline.x0, outline.y0)
    assert all("red" not in str(shape.line.color) for shape in figure.layout.shapes)
    assert figure.data[1].name.startswith("anchored heads")  # a legend entry for the outline


def test_p_true_distributions() -> None:
    figure = p_true_distributions([0.4, 0.45], [0.6, 0.7, 0.2], threshold=0.5)
    assert [type(t).__name__ for t in figure.data] == ["Histogram", "Histogram"]
    assert list(figure.data[1].x) == [0.6, 0.7, 0.2]
    assert figure.layout.shapes[0].x0 == 0.5
    assert figure.layout.xaxis.title.text.startswith("p_true")
    assert figure.data[0].histnorm == "percent" and "%" in figure.layout.yaxis.title.text
    probe = p_true_distributions([0.4], [0.6], title="Tracker 'probe': p_true")
    context = p_true_distributions([0.4], [0.6], title="Tracker 'context': p_true")
    assert probe.layout.title.text != context.layout.title.text


def test_trajectory_marks_trigger_and_backtrack() -> None:
    steered = make_trace([0.7, 0.6, 0.4, 0.5, 0.8, 0.9], trigger=2, dropped=2)
    plain = make_trace([0.7, 0.6, 0.4, 0.3], policy="none")
    figure = trajectory(steered, threshold=0.5, unsteered=plain)
    names = [t.name for t in figure.data]
    assert names == ["no steering", "FASB", "FASB: thrown away", "trigger"]
    kept_line = figure.data[1]
    assert list(kept_line.y) == [0.7, None, None, 0.5, 0.8, 0.9]
    assert list(figure.data[2].y) == [None, 0.6, 0.4, None, None, None]
    assert figure.data[3].x == (2,) and figure.data[3].y == (0.4,)
    shapes = figure.layout.shapes
    assert [s.type for s in shapes] == ["line", "rect"]
    assert (shapes[1].x0, shapes[1].x1) == (0.5, 2.5)
    assert figure.layout.xaxis.title.text == "generation step" and not figure.layout.xaxis.ticktext


def test_trajectory_labels_each_line_with_its_own_tokens() -> None:
    """Two runs write different tokens at the same step: each point shows its own."""
    steered = make_trace([0.7, 0.6, 0.4, 0.5, 0.8, 0.9], trigger=2, dropped=2)
    for step in steered.steps[3:]:
        step.token, step.strength = f"s{step.step}", 2.0
    plain = make_trace([0.7, 0.6, 0.4, 0.3], policy="none")
    plain.steps[0].token = "<b>"
    figure = trajectory(steered, threshold=0.5, unsteered=plain)
    unsteered_line, kept_line, thrown_line = figure.data[:3]
    assert list(unsteered_line.text) == ["'&lt;b&gt;'", "'t1'", "'t2'", "'t3'"]
    assert list(kept_line.text) == ["'t0'", "'t1'", "'t2'", "'s3'", "'s4'", "'s5'"]
    assert list(thrown_line.text) == list(kept_line.text)  # the same run, its other part
    assert list(kept_line.x) == [0, 1, 2, 3, 4, 5] and list(unsteered_line.x) == [0, 1, 2, 3]
    assert list(kept_line.customdata) == [0.0] * 3 + [2.0] * 3
    assert "token %{text}" in kept_line.hovertemplate and "strength" in kept_line.hovertemplate


def test_trajectories_selector() -> None:
    traces = [make_trace([0.5, 0.6]), make_trace([0.2, 0.3, 0.4], trigger=1, dropped=1)]
    figure = trajectories(traces, labels=["first", "second"], threshold=0.5)
    buttons = figure.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["first", "second"]
    visible = buttons[1].args[0]["visible"]
    assert len(visible) == len(figure.data) and sum(visible) == 3  # kept, thrown away, trigger
    with pytest.raises(ValueError, match="no traces"):
        trajectories([])


def summary() -> dict:
    pair = {"true": 0.5, "info": 0.8, "true_x_info": 0.4}
    fold = {"mc1": 0.3, "mc2": 0.5, "mc3": 0.2, "bleu-acc x info-check": pair}
    return {
        "policies": {
            name: {"per_fold": {"0": fold, "1": fold}, "mean": fold} for name in ("none", "fasb")
        }
    }


def test_method_comparison() -> None:
    """One panel per metric, the policies as labelled bars in their colours, a dashed line
    at no steering."""
    figure = method_comparison(summary())
    assert [bar.name for bar in figure.data] == ["MC1", "MC2", "MC3", "True", "Info", "True×Info"]
    mc1 = figure.data[0]
    assert list(mc1.y) == ["no steering", "FASB"] and mc1.x[0] == pytest.approx(30.0)
    assert list(mc1.marker.color) == [policy_color("none"), policy_color("fasb")]
    assert figure.data[5].x[1] == pytest.approx(40.0)  # True×Info of fasb, in percent
    dashed = [shape for shape in figure.layout.shapes if shape.line.dash == "dash"]
    assert len(dashed) == 6 and dashed[0].x0 == pytest.approx(30.0)
    leak_free = {"mc1": 0.3, "mc2": 0.5, "mc3": 0.2}
    nan = {"true": float("nan"), "info": float("nan"), "true_x_info": float("nan")}
    leak_free["bleu-acc x info-check"] = nan  # no generation under the leak-free protocol
    both = summary()
    both["policies"]["fasb_question"] = {"per_fold": {"0": leak_free}, "mean": leak_free}
    figure = method_comparison(both)
    assert list(figure.data[0].y) == ["no steering", "FASB", "FASB (leak-free)"]
    assert figure.data[0].marker.pattern.shape[-1] == "/"
    assert list(figure.data[3].y) == ["no steering", "FASB"]  # generation rows leave it out
    older = {"methods": summary()["policies"]}  # results.json before the rename
    assert list(method_comparison(older).data[0].y) == ["no steering", "FASB"]
    sure = summary()
    sure["policies"]["fasb"]["ci95"] = {"mc1": [0.2, 0.45]}
    whiskers = method_comparison(sure).data[0].error_x
    assert whiskers.arrayminus[1] == pytest.approx(10.0) and whiskers.array[1] == pytest.approx(
        15.0
    )


def test_sweep_lines() -> None:
    rows = [{"policy": m, "alpha": a, "mc2": a / 10} for m in ("fixed", "fasb") for a in (1, 4, 2)]
    lines = sweep_lines(rows, title="MC2 vs alpha")
    assert [line.name for line in lines.data] == ["ITI", "FASB"]
    assert list(lines.data[0].x) == [1, 2, 4] and lines.layout.xaxis.type == "log"
    assert list(lines.data[0].y) == pytest.approx([10.0, 20.0, 40.0])  # MC2 in percent
    assert lines.layout.yaxis.title.text == "MC2 (%)"
    assert lines.layout.xaxis.title.text == "strength α"
    assert lines.data[0].line.color == policy_color("fixed")


def test_sweeps_show_the_unsteered_line_and_the_chosen_setting() -> None:
    rows = [
        {"policy": m, "alpha": a, "mc2": a / 10, "fold": f}
        for f in (0, 1)
        for m in ("fixed", "fasb")
        for a in (1, 2, 4)
    ]
    chosen = {(0, "fasb"): 2, (0, "fixed"): 4, (1, "fasb"): 1, (1, "fixed"): 3}
    figure = sweep_lines(rows, facet="fold", chosen=chosen, unsteered={0: 0.15, 1: 0.25})
    stars = [t for t in figure.data if t.marker.symbol == "star"]
    assert [(t.name, t.x, t.y) for t in stars] == [
        ("ITI: chosen", (4,), (40.0,)),
        ("FASB: chosen", (2,), (20.0,)),
        ("FASB: chosen", (1,), (10.0,)),
    ]
    assert stars[0].marker.color == policy_color("fixed")
    lines = [s for s in figure.layout.shapes if s.y0 == s.y1]
    assert [s.y0 for s in lines] == pytest.approx([15.0, 25.0])
    assert {s.yref for s in lines} == {"y", "y2"}  # one per fold's panel
    assert [s.line.dash for s in lines] == ["dash", "dash"]
    missed = [s for s in figure.layout.shapes if s.x0 == s.x1]  # chosen 3 was not swept
    assert len(missed) == 1 and missed[0].x0 == pytest.approx(math.log10(3))
    assert [a.text for a in figure.layout.annotations][:2] == ["fold 0", "fold 1"]
    legend = [t.name for t in figure.data if t.showlegend is not False]
    assert legend == ["ITI", "FASB"]  # each line named once, not once per fold


def test_sweep_colours_do_not_repeat() -> None:
    """Lines that are not policies (K values) take distinct colours, the same in each
    panel."""
    ks = [6, 12, 24, 48, 96, 192, 270, 384, 512]
    rows = [{"k": k, "alpha": a, "mc2": 0.5, "fold": f} for f in (0, 1) for k in ks for a in (1, 2)]
    figure = sweep_lines(rows, group="k", facet="fold", labels={k: f"K = {k}" for k in ks})
    colors = {(t.xaxis, t.name): t.line.color for t in figure.data}
    first = [colors[("x", f"K = {k}")] for k in ks]
    assert len(set(first)) == len(ks)
    assert first == [colors[("x2", f"K = {k}")] for k in ks]


def test_dataset_accuracies(tmp_path) -> None:
    results = {
        "copa": {"n_test": 200, "accuracy": {"none": 0.725, "fasb": 0.70}},
        "nli": {"n_test": 100, "accuracy": {"none": 0.5, "fasb": 0.31}},
    }
    figure = dataset_accuracies(results)
    assert [bar.name for bar in figure.data] == ["no steering", "FASB"]
    assert [bar.marker.color for bar in figure.data] == [policy_color("none"), policy_color("fasb")]
    assert list(figure.data[0].x) == ["copa", "nli"]
    assert figure.data[1].y[1] == pytest.approx(31.0)
    assert figure.data[0].error_y.array[1] == pytest.approx(9.8)  # 1.96 * sqrt(.25 / 100)
    with_ci = {**results, "nli": {**results["nli"], "ci95": {"none": [0.41, 0.62]}}}
    whiskers = dataset_accuracies(with_ci).data[0].error_y  # the summary's own interval
    assert whiskers.arrayminus[1] == pytest.approx(9.0) and whiskers.array[1] == pytest.approx(12.0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mc_datasets.json").write_text(json.dumps(results))
    made = render_run(tmp_path / "run", tmp_path / "figs", png=False)
    assert [path.name for path, _ in made] == ["mc_datasets.html"]
    (tmp_path / "run" / "calibration").mkdir()
    (tmp_path / "run" / "calibration" / "copa.json").write_text(json.dumps(_calibration()))
    made = render_run(tmp_path / "run", tmp_path / "figs", png=False)
    assert [path.name for path, _ in made] == ["mc_datasets.html", "mc_datasets_sweeps.html"]


def _calibration() -> dict:
    """A dataset's calibration: FASB at two strengths at each of two thresholds, ITI
    (``fixed``) at three strengths."""
    rows = [
        {"method": "fasb", "alpha": a, "threshold": t, "accuracy": acc}
        for a, t, acc in ((2.0, 0.4, 0.5), (8.0, 0.4, 0.6), (4.0, 0.5, 0.9), (8.0, 0.5, 0.7))
    ]
    rows += [
        {"method": "fixed", "alpha": a, "threshold": None, "accuracy": acc}
        for a, acc in ((1.0, 0.55), (2.0, 0.65), (4.0, 0.6))
    ]
    return {
        "unsteered": {"accuracy": 0.575, "margin": 0.1},
        "strengths": {"fasb": 8.0, "fixed": 2.0},
        "threshold": 0.4,
        "sweep": rows,
    }


def test_dataset_sweeps(tmp_path) -> None:
    (tmp_path / "copa.json").write_text(json.dumps(_calibration()))  # as earlier versions wrote
    calibration = Calibration.load(tmp_path / "copa.json")
    assert calibration.strengths == {"mc": {"fasb": 8.0, "fixed": 2.0}}
    figure = dataset_sweeps({"copa": calibration, "nli": calibration})
    fasb, fasb_star, fixed, fixed_star = figure.data[:4]
    assert list(fasb.x) == [2.0, 8.0] and list(fasb.y) == pytest.approx([50.0, 60.0])
    assert list(fasb_star.x) == [8.0] and list(fasb_star.y) == pytest.approx([60.0])
    assert list(fixed.x) == [1.0, 2.0, 4.0] and list(fixed_star.y) == pytest.approx([65.0])
    assert [line.name for line in figure.data].count("FASB") == 2
    assert fasb.line.color == policy_color("fasb") and fasb_star.marker.symbol == "star"
    assert [trace.showlegend for trace in figure.data[::2]] == [True, True, False, False]
    dashed = [shape for shape in figure.layout.shapes if shape.line.dash == "dash"]
    assert [shape.y0 for shape in dashed] == pytest.approx([57.5, 57.5])
    assert figure.layout.xaxis.type == "log" and figure.layout.xaxis2.type == "log"


def test_anchored_heads_view() -> None:
    heads = [Head(2, 1), Head(0, 3)]
    z = torch.randn(10, 2, 4)
    labels = torch.tensor([1, 0] * 5)
    directions = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    figure = anchored_heads(
        heads, directions, z, labels, n_layers=3, n_heads=4, accuracy=[0.8, 0.7]
    )
    grid_cells, scatter, true_box, false_box = figure.data
    assert len(grid_cells.x) == 12  # every head of the model, in grey
    assert list(scatter.x) == [1, 3] and list(scatter.y) == [2, 0]
    assert list(scatter.text) == ["1", "2"] and "80.0%" in scatter.hovertext[0]
    assert true_box.name == "true answers" and list(true_box.x) == ["L2H1", "L0H3"]
    projections = (z * directions[None]).sum(-1)
    standard = (projections - projections.mean(0)) / projections.std(0)
    expected = standard[labels == 1][:, 0]
    assert true_box.median[0] == pytest.approx(float(expected.median()), abs=1e-5)
    assert true_box.q1[0] <= true_box.median[0] <= true_box.q3[0]
    assert true_box.y is None  # quartiles only: the file does not grow with the prompts


def test_anchored_heads_names_the_best_and_pools_the_rest() -> None:
    """192 anchored heads: only the best ``n_named`` carry a text label and a box each,
    the others are one pooled box per class."""
    heads = [Head(layer, head) for layer in range(24) for head in range(8)]
    z = torch.randn(40, len(heads), 4)
    labels = torch.tensor([1, 0] * 20)
    directions = torch.nn.functional.normalize(torch.randn(len(heads), 4), dim=-1)
    figure = anchored_heads(heads, directions, z, labels, n_layers=30, n_heads=9, n_named=10)
    scatter = figure.data[1]
    assert len(scatter.x) == 192 and sum(bool(text) for text in scatter.text) == 10
    true_box = figure.data[2]
    assert len(true_box.x) == 11 and true_box.x[-1] == "other 182 heads"
    labelled = sum(bool(t) for trace in figure.data for t in (getattr(trace, "text", None) or ()))
    labelled += sum(1 for a in figure.layout.annotations)
    assert labelled <= 10 + 2  # the numbered heads and the two panel titles


def test_grid_comparison() -> None:
    exact = torch.tensor([[0.5, -1.0], [float("nan"), 0.25]])
    estimate = torch.tensor([[0.4, -0.8], [0.1, 0.3]])
    figure = grid_comparison(exact, estimate, anchored=[Head(0, 1)], rank_correlation=0.9)
    heatmaps = [t for t in figure.data if isinstance(t, go.Heatmap)]
    points = [t for t in figure.data if isinstance(t, go.Scatter)]
    assert len(heatmaps) == 2 and heatmaps[0].zmin == -1.0 and heatmaps[0].zmax == 1.0
    assert list(points[1].text) == ["L0H1"] and sorted(points[0].text) == ["L0H0", "L1H1"]
    assert "rank correlation 0.90" in figure.layout.title.subtitle.text
    assert points[1].marker.color != "red"
    outlines = [s for s in figure.layout.shapes if s.name == "anchored"]
    assert len(outlines) == 2  # the anchored head, outlined on both heatmaps


def test_save_figure(tmp_path) -> None:
    figure = p_true_distributions([0.4], [0.6])
    written = save_figure(figure, tmp_path / "figs" / "dist", png=False)
    assert written == [tmp_path / "figs" / "dist.html"]
    assert (tmp_path / "figs" / "plotly.min.js").is_file()  # viewable offline
    html = written[0].read_text()
    assert 'src="plotly.min.js"' in html and '"type":"histogram"' in html


def test_render_a_published_results_folder(tmp_path) -> None:
    """``fasb-lens figures --run results/`` redraws what the published files hold."""
    published = tmp_path / "results"
    (published / "mc_calibration").mkdir(parents=True)
    (published / "truthfulqa_results.json").write_text(json.dumps(summary()))
    datasets = {"copa": {"n_test": 200, "accuracy": {"none": 0.725, "fasb": 0.70}}}
    (published / "mc_datasets.json").write_text(json.dumps(datasets))
    (published / "mc_calibration" / "copa.json").write_text(json.dumps(_calibration()))
    made = render_run(published, tmp_path / "figs", png=False)
    assert [path.name for path, _ in made] == [
        "methods.html",
        "mc_datasets.html",
        "mc_datasets_sweeps.html",
    ]
