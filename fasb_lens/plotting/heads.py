"""Figures about heads: a value per head as a grid, and the anchored heads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.activations import HeadActivations
from fasb_lens.plotting.common import grid
from fasb_lens.plotting.style import (
    ANCHORED_COLOR,
    DIVERGING_SCALE,
    FALSE_COLOR,
    HALO_COLOR,
    HALO_WIDTH,
    OUTLINE_COLOR,
    OUTLINE_WIDTH,
    SEQUENTIAL_SCALE,
    STEERED_COLOR,
    TRUE_COLOR,
    finish,
    is_fraction,
)
from fasb_lens.steering import Steering


def _outline(column: float, row: float) -> list[dict]:
    """A cell's outline: a dark line on a wider white halo, seen on any cell colour."""
    cell = {
        "type": "rect",
        "x0": column - 0.5,
        "x1": column + 0.5,
        "y0": row - 0.5,
        "y1": row + 0.5,
    }
    return [
        {**cell, "line": {"color": HALO_COLOR, "width": HALO_WIDTH}, "name": "halo"},
        {**cell, "line": {"color": OUTLINE_COLOR, "width": OUTLINE_WIDTH}, "name": "anchored"},
    ]


def _outline_key(name: str = "anchored heads (outlined)") -> go.Scatter:
    """A legend entry for the outlines (shapes have none)."""
    return go.Scatter(
        x=[None],
        y=[None],
        mode="markers",
        name=name,
        marker={
            "symbol": "square-open",
            "size": 14,
            "color": OUTLINE_COLOR,
            "line": {"width": OUTLINE_WIDTH},
        },
        hoverinfo="skip",
    )


def _hover_labels(
    grids: Sequence[tuple[str, Tensor]], order: Tensor, scale: float, unit: str, digits: int
) -> list[list[str]]:
    """Each shown cell's hover text: its real head, then its value in every named grid
    (the first is the one shown); ``order`` maps a shown column to its head."""
    n_layers, n_heads = order.shape
    labels = [["" for _ in range(n_heads)] for _ in range(n_layers)]
    for layer in range(n_layers):
        for column in range(n_heads):
            head = int(order[layer, column])
            parts = [f"layer {layer}, head {head}"]
            parts += [
                f"{name}: {scale * float(values[layer, head]):.{digits}f}{unit}"
                for name, values in grids
            ]
            labels[layer][column] = "<br>".join(parts)
    return labels


def _centred_bounds(values: Tensor, zmid: float) -> dict[str, float]:
    """A diverging scale's ends: as far below ``zmid`` as the farthest value is from it,
    and as far above (blank cells ignored)."""
    spread = float(torch.nan_to_num(values - zmid, nan=0.0).abs().max()) or 1.0
    return {"zmin": zmid - spread, "zmax": zmid + spread}


def head_heatmap(
    values: Tensor,
    *,
    anchored: Sequence[Head] = (),
    title: str = "Validation accuracy of each head's probe",
    subtitle: str | None = None,
    colorbar: str = "accuracy",
    extra: Mapping[str, Tensor] | None = None,
    sort_within_layer: bool = False,
    zmid: float | None = None,
    percent: bool | None = None,
) -> go.Figure:
    """A ``[layer, head]`` grid as a heatmap; anchored heads get an outline.

    Args:
        values: ``[n_layers, n_heads]``; NaN cells (heads not fitted) stay blank.
        anchored: heads to outline (e.g. the top-K): a dark line on a white halo, which
            stands out on the red and the blue cells of a diverging scale alike.
        colorbar: what ``values`` are (the colour bar's title, with its unit).
        extra: more ``[layer, head]`` grids to show on hover (e.g. training accuracy).
        sort_within_layer: order each layer's heads by value, best first (the paper's
            view); hover still names the real head.
        zmid: centre of a diverging colour scale (e.g. 0 for an ablation effect), which
            then spans as far below as above it.
        percent: show fractions in percent (default: when ``colorbar`` names a fraction,
            such as accuracy, and the scale is not diverging).
    """
    n_layers, n_heads = values.shape
    percent = is_fraction(colorbar) and zmid is None if percent is None else percent
    scale = 100.0 if percent else 1.0
    order = torch.arange(n_heads).expand(n_layers, n_heads)
    if sort_within_layer:
        order = torch.nan_to_num(values, nan=-math.inf).argsort(dim=1, descending=True)
    shown = values.gather(1, order) * scale
    grids = [(colorbar, values), *(extra or {}).items()]
    labels = _hover_labels(grids, order, scale, "%" if percent else "", 1 if percent else 3)
    bounds = {} if zmid is None else _centred_bounds(values, zmid)
    figure = go.Figure(
        go.Heatmap(
            z=grid(shown),
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            text=labels,
            hoverinfo="text",
            colorscale=DIVERGING_SCALE if zmid is not None else SEQUENTIAL_SCALE,
            zmid=zmid,
            **bounds,
            colorbar={"title": {"text": f"{colorbar} (%)" if percent else colorbar}},
        )
    )
    for head in anchored:
        column = int((order[head.layer] == head.head).nonzero()[0, 0])
        for shape in _outline(column, head.layer):
            figure.add_shape(**shape)
    if anchored:
        figure.add_trace(_outline_key(f"anchored heads ({len(anchored)}, outlined)"))
        figure.update_layout(showlegend=True)
    figure.update_xaxes(
        title_text="head (sorted by value within each layer)" if sort_within_layer else "head",
        dtick=1,
        showgrid=False,
    )
    figure.update_yaxes(title_text="layer", showgrid=False)
    return finish(figure, title, subtitle=subtitle, legend="bottom")


def _box_stats(values: Tensor) -> dict[str, float]:
    """A box's quartiles, mean and Tukey whiskers (the farthest values within 1.5 IQR)."""
    values = values.float()
    q1, median, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75])).tolist()
    reach = 1.5 * (q3 - q1)
    inside = values[(values >= q1 - reach) & (values <= q3 + reach)]
    return {
        "q1": q1,
        "median": median,
        "q3": q3,
        "mean": float(values.mean()),
        "lowerfence": float(inside.min()),
        "upperfence": float(inside.max()),
    }


def anchored_heads(
    heads: Sequence[Head],
    directions: Tensor,
    z: Tensor,
    labels: Tensor,
    *,
    n_layers: int,
    n_heads: int,
    **view: Any,
) -> go.Figure:
    """Where the anchored heads sit (left) and how their directions separate classes (right).

    ``z`` holds the anchored heads' activations ``[n, k, d_head]`` (e.g.
    ``activations.heads(heads)``), ``directions`` their steering directions ``[k, d_head]``
    and ``labels`` the prompts' 1/0 labels. The figure is
    :func:`anchored_heads_from_projections` of their projections, and ``view`` takes its
    other options (``accuracy``, ``n_named``, ``title``, ``subtitle``).
    """
    projections = (z * directions[None]).sum(-1)  # [n, k]
    return anchored_heads_from_projections(
        heads, projections, labels, n_layers=n_layers, n_heads=n_heads, **view
    )


def _head_positions(
    figure: go.Figure,
    heads: Sequence[Head],
    named: int,
    n_layers: int,
    n_heads: int,
    accuracy: Sequence[float] | None,
) -> None:
    """The left panel: every head of the model a grey cell, the anchored ones coloured by
    rank on top, the best ``named`` numbered."""
    k = len(heads)
    everything = [(head, layer) for layer in range(n_layers) for head in range(n_heads)]
    figure.add_trace(
        go.Scatter(
            x=[head for head, _ in everything],
            y=[layer for _, layer in everything],
            mode="markers",
            marker={"symbol": "square", "size": 9, "color": "#e6e6e6"},
            hoverinfo="skip",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    score = "" if accuracy is None else "validation accuracy "

    def hover(i: int) -> str:
        text = f"{heads[i]}: rank {i + 1} of {k}"
        return text + (f", {score}{100 * accuracy[i]:.1f}%" if accuracy is not None else "")

    figure.add_trace(
        go.Scatter(
            x=[h.head for h in heads],
            y=[h.layer for h in heads],
            mode="markers+text",
            text=[str(i + 1) if i < named else "" for i in range(k)],
            textposition="middle right",
            textfont={"size": 12},
            marker={
                "size": [13 if i < named else 8 for i in range(k)],
                "color": list(range(1, k + 1)),
                "colorscale": "Viridis",
                "line": {"color": "white", "width": 0.5},
            },
            hovertext=[hover(i) for i in range(k)],
            hoverinfo="text",
            showlegend=False,
        ),
        row=1,
        col=1,
    )


def _projection_boxes(
    figure: go.Figure, heads: Sequence[Head], projections: Tensor, labels: Tensor, named: int
) -> None:
    """The right panel: per class, a box of the standardised projections for each of the
    best ``named`` heads and one pooling the other anchored heads."""
    k = len(heads)
    values = projections.float()
    centred = (values - values.mean(0)) / values.std(0).clamp_min(1e-12)
    groups = [(str(heads[i]), [i]) for i in range(named)]
    if k > named:
        groups.append((f"other {k - named} heads", list(range(named, k))))
    for label, name, color in ((1, "true answers", TRUE_COLOR), (0, "false answers", FALSE_COLOR)):
        rows = centred[labels == label]
        stats = [_box_stats(rows[:, columns].flatten()) for _, columns in groups]
        figure.add_trace(
            go.Box(
                x=[group for group, _ in groups],
                name=name,
                marker_color=color,
                boxmean=True,
                **{key: [s[key] for s in stats] for key in stats[0]},
                hoverinfo="y+name",
            ),
            row=1,
            col=2,
        )


def anchored_heads_from_projections(
    heads: Sequence[Head],
    projections: Tensor,
    labels: Tensor,
    *,
    n_layers: int,
    n_heads: int,
    accuracy: Sequence[float] | None = None,
    n_named: int = 10,
    title: str = "Anchored heads and how their steering directions separate answers",
    subtitle: str | None = None,
) -> go.Figure:
    """The anchored heads (``heads`` best first) on the layer x head grid, and how true
    and false answers project on their directions (``projections``: ``[n, k]``).

    Left, every head of the model is a grey cell and the anchored ones are coloured by
    rank; only the best ``n_named`` are numbered, so a large K stays readable. Right, a
    box per class for each of those ``n_named`` heads and one for all the other anchored
    heads together. Projections are standardised per head (minus its mean, over its
    standard deviation across all prompts) so heads of different scales share one axis and
    can be pooled; the boxes carry their quartiles only, which keeps the file small
    whatever the number of prompts.
    """
    k = len(heads)
    named = min(n_named, k)
    figure = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.32, 0.68],
        horizontal_spacing=0.1,
        subplot_titles=(
            f"{k} anchored heads (best {named} numbered)",
            "true vs false answers on each head's direction",
        ),
    )
    _head_positions(figure, heads, named, n_layers, n_heads, accuracy)
    _projection_boxes(figure, heads, projections, labels, named)
    figure.update_xaxes(title_text="head", range=[-0.5, n_heads - 0.5], dtick=1, row=1, col=1)
    figure.update_yaxes(title_text="layer", range=[-0.5, n_layers - 0.5], row=1, col=1)
    figure.update_xaxes(title_text="anchored head (best first)", tickangle=-45, row=1, col=2)
    figure.update_yaxes(title_text="projection (standardised per head)", row=1, col=2)
    figure.update_layout(boxmode="group")
    return finish(figure, title, subtitle=subtitle, legend="right", height=650)


def steering_heads(steering: Steering, activations: HeadActivations) -> go.Figure:
    """:func:`anchored_heads` for a steering artifact and the labelled activations it was
    built from."""
    if activations.labels is None:
        raise ValueError("the anchored-heads figure needs labelled activations")
    return anchored_heads(
        list(steering.heads),
        steering.directions,
        activations.heads(steering.heads),
        activations.labels,
        n_layers=steering.shape.n_layers,
        n_heads=steering.shape.n_heads,
        accuracy=[float(steering.val_accuracy[head]) for head in steering.heads],
    )


def grid_comparison(
    exact: Tensor,
    estimate: Tensor,
    *,
    anchored: Sequence[Head] = (),
    labels: tuple[str, str] = ("exact ablation", "attribution estimate"),
    title: str = "Each head's effect: exact against the first-order estimate",
    rank_correlation: float | None = None,
) -> go.Figure:
    """Two ``[layer, head]`` effect grids side by side, and one against the other.

    Both heatmaps share one diverging colour scale centred on 0, anchored heads outlined;
    in the scatter each point is a head (anchored heads in green), so the estimate's
    agreement is read at a glance.
    """
    n_layers, n_heads = exact.shape
    both = torch.cat([exact.flatten(), estimate.flatten()])
    bound = float(torch.nan_to_num(both, nan=0.0).abs().max()) or 1.0
    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(*labels, f"{labels[1]} vs {labels[0]}"),
        horizontal_spacing=0.12,
    )
    right = figure.layout.xaxis2.domain[1]  # the colour bar sits just right of the second grid
    for column, values in enumerate((exact, estimate), start=1):
        figure.add_trace(
            go.Heatmap(
                z=grid(values),
                colorscale=DIVERGING_SCALE,
                zmid=0.0,
                zmin=-bound,
                zmax=bound,
                showscale=column == 2,
                colorbar={"title": {"text": "effect"}, "x": right + 0.005, "thickness": 12},
                hovertemplate="layer %{y}, head %{x}: %{z:.4f}<extra></extra>",
            ),
            row=1,
            col=column,
        )
        for head in anchored:
            for shape in _outline(head.head, head.layer):
                figure.add_shape(**shape, row=1, col=column)
        figure.update_xaxes(title_text="head", showgrid=False, row=1, col=column)
        figure.update_yaxes(title_text="layer", showgrid=False, row=1, col=column)
    marked = set(anchored)
    heads = [Head(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    keep = [h for h in heads if not (math.isnan(float(exact[h])) or math.isnan(float(estimate[h])))]
    for is_anchored in (False, True):
        chosen = [h for h in keep if (h in marked) == is_anchored]
        figure.add_trace(
            go.Scatter(
                x=[float(exact[h]) for h in chosen],
                y=[float(estimate[h]) for h in chosen],
                mode="markers",
                marker={
                    "color": ANCHORED_COLOR if is_anchored else STEERED_COLOR,
                    "size": 8 if is_anchored else 6,
                    "opacity": 1.0 if is_anchored else 0.6,
                    "line": {"color": "white", "width": 0.5},
                },
                name="anchored heads (outlined)" if is_anchored else "other heads",
                text=[str(h) for h in chosen],
                hovertemplate="%{text}: exact %{x:.4f}, estimate %{y:.4f}<extra></extra>",
            ),
            row=1,
            col=3,
        )
    figure.update_xaxes(title_text=labels[0], row=1, col=3)
    figure.update_yaxes(title_text=labels[1], row=1, col=3)
    subtitle = None if rank_correlation is None else f"rank correlation {rank_correlation:.2f}"
    return finish(figure, title, subtitle=subtitle, legend="bottom", width=1300, height=560)
