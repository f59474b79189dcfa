"""The figures' template: one colour and label per policy, units, one layout."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.plotting import (
    dataset_accuracies,
    direction_share,
    grid_comparison,
    head_heatmap,
    method_comparison,
    p_true_distributions,
    save_figure,
    sweep_lines,
)
from fasb_lens.plotting.style import (
    EXTRA_COLORS,
    TEMPLATE,
    folds_text,
    metric_label,
    policy_color,
    policy_colors,
    policy_label,
    policy_line,
    policy_pattern,
    registered_colors,
    series_colors,
    tint,
)
from fasb_lens.policies import POLICIES, PolicySpec, Unsteered


def _spec(name: str, **fields) -> PolicySpec:
    return PolicySpec(name=name, build=lambda settings: Unsteered(), description="test", **fields)


def test_every_registered_policy_has_its_own_colour() -> None:
    names = POLICIES.names()
    colors = policy_colors(names)
    assert len(set(colors.values())) == len(names)
    assert colors == {name: policy_color(name) for name in names}  # the same figure to figure


def test_a_control_is_a_tint_of_its_policy() -> None:
    for spec in POLICIES:
        if spec.control_of:
            assert policy_color(spec.name) == tint(policy_color(spec.control_of))
            assert policy_color(spec.name) != policy_color(spec.control_of)
            assert policy_line(spec.name) == "dot" and policy_line(spec.control_of) == "solid"
    assert policy_label("fixed_random") == "ITI, random directions"


def test_leak_free_rows_keep_their_policy_colour_with_a_hatch() -> None:
    assert policy_color("fasb_question") == policy_color("fasb")
    assert policy_color("fasb_random_question") == policy_color("fasb_random")
    assert policy_pattern("fasb_question") == "/" and policy_pattern("fasb") == ""
    assert policy_line("fasb_question") == "dash"
    assert policy_label("fasb_question") == "FASB (leak-free)"
    assert policy_label("fasb_random_question") == "FASB, random directions (leak-free)"


def test_a_new_policy_gets_a_colour_no_built_in_uses() -> None:
    with (
        POLICIES.registered(_spec("gated")),
        POLICIES.registered(_spec("gated_random", control_of="gated")),
    ):
        everything = policy_colors(POLICIES.names())
        assert len(set(everything.values())) == len(everything)
        assert everything["gated"] in EXTRA_COLORS
        assert everything["gated"] not in registered_colors()
        assert everything["gated_random"] == tint(everything["gated"])
        assert policy_label("gated") == "gated"
        assert policy_label("gated_random") == "gated, random directions"
        assert policy_colors(["gated"]) == policy_colors(["gated"])  # deterministic


def test_unknown_names_never_share_a_colour_within_a_figure() -> None:
    names = [f"policy{i}" for i in range(len(EXTRA_COLORS) + 5)]
    colors = policy_colors(["fasb", *names])
    assert len(set(colors.values())) == len(colors)
    assert not set(colors.values()) & (set(registered_colors()) - {colors["fasb"]})


def test_series_colours_are_distinct() -> None:
    for count in (1, 5, 7, 12, 30):
        assert len(set(series_colors(count))) == count


def test_labels_and_units() -> None:
    assert metric_label("true_x_info") == "True×Info (%)"
    assert metric_label("mc2") == "MC2 (%)" and metric_label("mc2", percent=False) == "MC2"
    assert metric_label("alpha") == "strength α" and metric_label("threshold") == "threshold β"
    assert policy_label("none") == "no steering" and policy_label("fixed") == "ITI"
    assert policy_label("fasb_no_backtrack") == "FASB w/o backtracking"
    assert folds_text([0]) == "fold 0" and folds_text([0, 1]) == "folds 0 and 1"


def _summary() -> dict:
    pair = {"true": 0.5, "info": 0.8, "true_x_info": 0.4}
    fold = {"mc1": 0.3, "mc2": 0.5, "mc3": 0.2, "bleu-acc x info-check": pair}
    policies = {
        name: {"per_fold": {"0": fold, "1": fold}, "mean": fold}
        for name in ("none", "fasb", "fasb_random")
    }
    share = {"gain": 0.1, "control_gain": 0.05, "direction_share": 0.5}
    return {"policies": policies, "direction_share": {"fasb": {"mc2": share}}}


def _figures() -> dict[str, go.Figure]:
    values = torch.rand(3, 4)
    return {
        "head_heatmap": head_heatmap(values, anchored=[Head(0, 1)]),
        "grid_comparison": grid_comparison(values, values, anchored=[Head(0, 1)]),
        "p_true": p_true_distributions([0.4], [0.6], threshold=0.5),
        "methods": method_comparison(_summary()),
        "direction_share": direction_share(_summary()),
        "sweep": sweep_lines([{"policy": "fasb", "alpha": 1.0, "mc2": 0.5}]),
        "datasets": dataset_accuracies({"copa": {"n_test": 10, "accuracy": {"none": 0.5}}}),
    }


def test_every_figure_uses_the_template() -> None:
    for name, figure in _figures().items():
        assert figure.layout.template.layout.font == TEMPLATE.layout.font, name
        assert figure.layout.title.text, name


def test_direction_share_pairs_a_policy_with_its_control() -> None:
    figure = direction_share(_summary())
    learnt, control = figure.data
    assert (learnt.name, control.name) == ("FASB", "FASB, random directions")
    assert control.marker.color == tint(learnt.marker.color) and not learnt.marker.pattern.shape
    assert learnt.y == pytest.approx((10.0,)) and control.y == pytest.approx((5.0,))


def test_html_files_share_one_plotly_js(tmp_path) -> None:
    """plotly.js is written once beside the HTML files, not inlined in each."""
    for name, figure in _figures().items():
        save_figure(figure, tmp_path / name, png=False)
    pages = sorted(tmp_path.glob("*.html"))
    assert len(pages) == 7 and [p.name for p in tmp_path.glob("*.js")] == ["plotly.min.js"]
    for page in pages:
        text = page.read_text()
        assert 'src="plotly.min.js"' in text and page.stat().st_size < 100_000, page.name
