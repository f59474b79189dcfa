"""Figures are pure functions: inspect the figure objects, never the pixels."""

from __future__ import annotations

import json

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
    assert "layer 1, head 0" in heat.text[1][0] and "train: 0.910" in heat.text[1][0]
    rects = [(s.x0, s.y0) for s in figure.layout.shapes]
    assert rects == [(-0.5, 0.5), (0.5, -0.5)]
    assert figure.layout.xaxis.title.text == "head" and figure.layout.yaxis.title.text == "layer"
    ranked = head_heatmap(values, anchored=[Head(1, 2)], sort_within_layer=True)
    assert ranked.data[0].z[1] == pytest.approx([0.9, 0.8, 0.6])
    assert ranked.layout.shapes[0].x0 == 0.5  # head 2 is second in its layer once sorted
    assert "layer 1, head 2" in ranked.data[0].text[1][1]


def test_p_true_distributions() -> None:
    figure = p_true_distributions([0.4, 0.45], [0.6, 0.7, 0.2], threshold=0.5)
    assert [type(t).__name__ for t in figure.data] == ["Histogram", "Histogram"]
    assert list(figure.data[1].x) == [0.6, 0.7, 0.2]
    assert figure.layout.shapes[0].x0 == 0.5 and figure.layout.xaxis.title.text == "p_true"


def test_trajectory_marks_trigger_and_backtrack() -> None:
    steered = make_trace([0.7, 0.6, 0.4, 0.5, 0.8, 0.9], trigger=2, dropped=2)
    plain = make_trace([0.7, 0.6, 0.4, 0.3], policy="none")
    figure = trajectory(steered, threshold=0.5, unsteered=plain)
    names = [t.name for t in figure.data]
    assert names == ["unsteered", "fasb", "fasb: thrown away", "trigger"]
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


def test_method_comparison_and_sweeps() -> None:
    figure = method_comparison(summary())
    assert [bar.name for bar in figure.data] == ["none", "fasb"]
    assert list(figure.data[0].x)[:3] == ["MC1", "MC2", "MC3"]
    assert len(figure.data[0].x) == 6 and figure.data[0].y[0] == pytest.approx(30.0)
    rows = [{"policy": m, "alpha": a, "mc2": a / 10} for m in ("fixed", "fasb") for a in (1, 4, 2)]
    lines = sweep_lines(rows, title="MC2 vs alpha")
    assert [line.name for line in lines.data] == ["fixed", "fasb"]
    assert list(lines.data[0].x) == [1, 2, 4] and lines.layout.xaxis.type == "log"


def test_dataset_accuracies(tmp_path) -> None:
    results = {
        "copa": {"n_test": 200, "accuracy": {"none": 0.725, "fasb": 0.70}},
        "nli": {"n_test": 100, "accuracy": {"none": 0.5, "fasb": 0.31}},
    }
    figure = dataset_accuracies(results)
    assert [bar.name for bar in figure.data] == ["none", "fasb"]
    assert list(figure.data[0].x) == ["copa", "nli"]
    assert figure.data[1].y[1] == pytest.approx(31.0)
    assert figure.data[0].error_y.array[1] == pytest.approx(9.8)  # 1.96 * sqrt(.25 / 100)
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
    assert [line.name for line in figure.data].count("fasb") == 2
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
    scatter, true_box, false_box = figure.data
    assert list(scatter.x) == [1, 3] and list(scatter.y) == [2, 0]
    assert true_box.name == "true answers" and len(true_box.y) == 10
    expected = (z[labels == 1][:, 0] * directions[0]).sum(-1)
    assert true_box.y[:5] == pytest.approx(expected.tolist(), abs=1e-6)


def test_grid_comparison() -> None:
    exact = torch.tensor([[0.5, -1.0], [float("nan"), 0.25]])
    estimate = torch.tensor([[0.4, -0.8], [0.1, 0.3]])
    figure = grid_comparison(exact, estimate, anchored=[Head(0, 1)], rank_correlation=0.9)
    heatmaps = [t for t in figure.data if isinstance(t, go.Heatmap)]
    points = [t for t in figure.data if isinstance(t, go.Scatter)]
    assert len(heatmaps) == 2 and heatmaps[0].zmin == -1.0 and heatmaps[0].zmax == 1.0
    assert list(points[1].text) == ["L0H1"] and sorted(points[0].text) == ["L0H0", "L1H1"]
    assert "rank correlation 0.90" in figure.layout.title.text


def test_save_figure(tmp_path) -> None:
    figure = p_true_distributions([0.4], [0.6])
    written = save_figure(figure, tmp_path / "figs" / "dist", png=False)
    assert written == [tmp_path / "figs" / "dist.html"]
    assert (tmp_path / "figs" / "plotly.min.js").is_file()  # viewable offline
    html = written[0].read_text()
    assert 'src="plotly.min.js"' in html and '"type":"histogram"' in html
