"""Figures about heads: a value per head as a grid, and the anchored heads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.activations import HeadActivations
from fasb_lens.plotting.common import FALSE_COLOR, TRUE_COLOR, grid
from fasb_lens.steering import Steering


def head_heatmap(
    values: Tensor,
    *,
    anchored: Sequence[Head] = (),
    title: str = "Validation accuracy of each head's probe",
    colorbar: str = "accuracy",
    extra: Mapping[str, Tensor] | None = None,
    sort_within_layer: bool = False,
    zmid: float | None = None,
) -> go.Figure:
    """A ``[layer, head]`` grid as a heatmap; anchored heads get an outline.

    Args:
        values: ``[n_layers, n_heads]``; NaN cells (heads not fitted) stay blank.
        anchored: heads to outline (e.g. the top-K).
        extra: more ``[layer, head]`` grids to show on hover (e.g. training accuracy).
        sort_within_layer: order each layer's heads by value, best first (the paper's
            view); hover still names the real head.
        zmid: centre of a diverging colour scale (e.g. 0 for an ablation effect).
    """
    n_layers, n_heads = values.shape
    order = torch.arange(n_heads).expand(n_layers, n_heads)
    if sort_within_layer:
        order = torch.nan_to_num(values, nan=-math.inf).argsort(dim=1, descending=True)
    shown = values.gather(1, order)
    extra = dict(extra or {})
    labels = [["" for _ in range(n_heads)] for _ in range(n_layers)]
    for layer in range(n_layers):
        for column in range(n_heads):
            head = int(order[layer, column])
            parts = [f"layer {layer}, head {head}", f"{colorbar}: {float(values[layer, head]):.3f}"]
            parts += [f"{name}: {float(grid[layer, head]):.3f}" for name, grid in extra.items()]
            labels[layer][column] = "<br>".join(parts)
    scale = "RdBu" if zmid is not None else "Viridis"
    figure = go.Figure(
        go.Heatmap(
            z=grid(shown),
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            text=labels,
            hoverinfo="text",
            colorscale=scale,
            zmid=zmid,
            colorbar={"title": {"text": colorbar}},
        )
    )
    for head in anchored:
        column = int((order[head.layer] == head.head).nonzero()[0, 0])
        figure.add_shape(
            type="rect",
            x0=column - 0.5,
            x1=column + 0.5,
            y0=head.layer - 0.5,
            y1=head.layer + 0.5,
            line={"color": "red", "width": 2},
        )
    figure.update_layout(
        title=title,
        xaxis_title="head (sorted by value within each layer)" if sort_within_layer else "head",
        yaxis_title="layer",
        template="plotly_white",
    )
    return figure


def anchored_heads(
    heads: Sequence[Head],
    directions: Tensor,
    z: Tensor,
    labels: Tensor,
    *,
    n_layers: int,
    n_heads: int,
    accuracy: Sequence[float] | None = None,
) -> go.Figure:
    """Where the anchored heads sit (left) and how their directions separate classes (right).

    ``z`` holds the anchored heads' activations ``[n, k, d_head]`` (e.g.
    ``activations.heads(heads)``) and ``labels`` the prompts' 1/0 labels; the right panel
    shows, per head, the distribution of projections on the steering direction for true
    and false answers.
    """
    figure = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.3, 0.7],
        subplot_titles=("anchored heads", "projection on the direction"),
    )
    ranks = {head: rank for rank, head in enumerate(heads)}
    figure.add_trace(
        go.Scatter(
            x=[h.head for h in heads],
            y=[h.layer for h in heads],
            mode="markers+text",
            text=[str(ranks[h] + 1) for h in heads],
            textposition="middle right",
            marker={"size": 12, "color": list(range(len(heads))), "colorscale": "Viridis"},
            hovertext=[
                f"{h} (rank {ranks[h] + 1})"
                + (f", accuracy {accuracy[i]:.3f}" if accuracy is not None else "")
                for i, h in enumerate(heads)
            ],
            hoverinfo="text",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    projections = (z * directions[None]).sum(-1)  # [n, k]
    names = [str(head) for head in heads]
    for label, name, color in ((1, "true answers", TRUE_COLOR), (0, "false answers", FALSE_COLOR)):
        rows = projections[labels == label]
        figure.add_trace(
            go.Box(
                x=[names[k] for k in range(len(heads)) for _ in range(len(rows))],
                y=rows.T.flatten().tolist(),
                name=name,
                marker_color=color,
                boxpoints=False,
            ),
            row=1,
            col=2,
        )
    figure.update_xaxes(title_text="head", range=[-0.5, n_heads - 0.5], row=1, col=1)
    figure.update_yaxes(title_text="layer", range=[-0.5, n_layers - 0.5], row=1, col=1)
    figure.update_yaxes(title_text="projection", row=1, col=2)
    figure.update_layout(
        boxmode="group",
        template="plotly_white",
        title="Anchored heads and their steering directions",
    )
    return figure


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

    Both heatmaps share one diverging colour scale centred on 0; in the scatter each point
    is a head (anchored heads in red), so the estimate's agreement is read at a glance.
    """
    n_layers, n_heads = exact.shape
    both = torch.cat([exact.flatten(), estimate.flatten()])
    bound = float(torch.nan_to_num(both, nan=0.0).abs().max()) or 1.0
    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(*labels, f"{labels[1]} vs {labels[0]}"),
        horizontal_spacing=0.08,
    )
    for column, values in enumerate((exact, estimate), start=1):
        figure.add_trace(
            go.Heatmap(
                z=grid(values),
                colorscale="RdBu",
                zmin=-bound,
                zmax=bound,
                showscale=column == 2,
                hovertemplate="layer %{y}, head %{x}: %{z:.4f}<extra></extra>",
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="head", row=1, col=column)
        figure.update_yaxes(title_text="layer", row=1, col=column)
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
                marker={"color": "red" if is_anchored else "#264653", "size": 6},
                name="anchored heads" if is_anchored else "other heads",
                text=[str(h) for h in chosen],
                hovertemplate="%{text}: exact %{x:.4f}, estimate %{y:.4f}<extra></extra>",
            ),
            row=1,
            col=3,
        )
    figure.update_xaxes(title_text=labels[0], row=1, col=3)
    figure.update_yaxes(title_text=labels[1], row=1, col=3)
    if rank_correlation is not None:
        title = f"{title} (rank correlation {rank_correlation:.2f})"
    figure.update_layout(
        title=title,
        template="plotly_white",
        width=1300,
        height=520,
        legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": -0.15},
    )
    return figure
