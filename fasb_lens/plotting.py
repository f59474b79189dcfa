"""Figures: pure functions from data to plotly figures, and one function that saves them.

Every function here takes plain data (tensors, traces, summaries) and returns a
``plotly.graph_objects.Figure``; none shows, writes or changes anything. Only
:func:`save_figure` touches the disk: HTML always, PNG when ``kaleido`` can find a
Chrome/Chromium to render with.

* :func:`head_heatmap` - a value per head (probe accuracy, an ablation effect) as a
  layers x heads grid, anchored heads outlined (the paper's Figure 4);
* :func:`p_true_distributions` - the tracker's readings on the question alone versus
  during generation (the paper's Figure 1);
* :func:`trajectory` and :func:`trajectories` - ``p_true`` token by token, with the
  threshold, the trigger, the backtracked span and the steered continuation;
* :func:`method_comparison`, :func:`sweep_lines` - results of an experiment;
* :func:`anchored_heads` - where the anchored heads sit and how their directions
  separate true from false answers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.generation import GenerationTrace

logger = logging.getLogger(__name__)

TRUE_COLOR, FALSE_COLOR = "#2a9d8f", "#e76f51"
STEERED_COLOR, PLAIN_COLOR = "#264653", "#a8a8a8"


def _grid(values: Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in values.tolist()]


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
            z=_grid(shown),
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


def p_true_distributions(
    question: Sequence[float],
    generation: Sequence[float],
    *,
    threshold: float | None = None,
    labels: tuple[str, str] = ("question only", "during generation"),
    title: str = "Truthfulness probability from the question alone vs during generation",
) -> go.Figure:
    """Overlaid histograms of two sets of tracker readings, with the threshold."""
    figure = go.Figure()
    for values, name, color in (
        (question, labels[0], PLAIN_COLOR),
        (generation, labels[1], STEERED_COLOR),
    ):
        figure.add_trace(
            go.Histogram(
                x=list(values),
                name=name,
                marker_color=color,
                opacity=0.65,
                xbins={"start": 0, "end": 1, "size": 0.025},
                histnorm="probability",
            )
        )
    if threshold is not None:
        figure.add_vline(
            x=threshold,
            line_dash="dash",
            line_color="red",
            annotation_text=f"threshold {threshold:.2f}",
        )
    figure.update_layout(
        barmode="overlay",
        title=title,
        xaxis_title="p_true",
        yaxis_title="fraction",
        xaxis_range=[0, 1],
        template="plotly_white",
    )
    return figure


def _trajectory_traces(trace: GenerationTrace, name: str, color: str) -> list[go.Scatter]:
    """One line per segment of a generation: what was kept and what was thrown away."""
    steps = trace.steps
    x = list(range(len(steps)))
    y = [step.p_true for step in steps]
    text = [repr(step.token) for step in steps]
    kept = [step.kept for step in steps]
    hover = "step %{x}<br>token %{text}<br>p_true %{y:.3f}<extra>"
    lines = [
        go.Scatter(
            x=x,
            y=[v if k else None for v, k in zip(y, kept, strict=True)],
            mode="lines+markers",
            name=name,
            line={"color": color},
            text=text,
            hovertemplate="step %{x}<br>token %{text}<br>p_true %{y:.3f}<extra>"
            + name
            + "</extra>",
        )
    ]
    if not all(kept):
        lines.append(
            go.Scatter(
                x=x,
                y=[v if not k else None for v, k in zip(y, kept, strict=True)],
                mode="lines+markers",
                name=f"{name}: thrown away",
                line={"color": color, "dash": "dot"},
                marker={"symbol": "x"},
                text=text,
                hovertemplate=hover + "discarded</extra>",
            )
        )
    return lines


def trajectory(
    trace: GenerationTrace,
    *,
    threshold: float | None = None,
    unsteered: GenerationTrace | None = None,
    title: str | None = None,
) -> go.Figure:
    """``p_true`` at every generation step of one prompt.

    The x-axis labels are the tokens generated at each step; the dashed line is the
    threshold; a star marks the check that triggered; the backtracked span is shaded and
    its tokens drawn dotted; ``unsteered`` (e.g. the same prompt under policy ``none``)
    is overlaid in grey.
    """
    figure = go.Figure()
    if unsteered is not None:
        for line in _trajectory_traces(unsteered, "unsteered", PLAIN_COLOR):
            figure.add_trace(line)
    for line in _trajectory_traces(trace, trace.policy, STEERED_COLOR):
        figure.add_trace(line)
    if threshold is not None:
        figure.add_hline(
            y=threshold,
            line_dash="dash",
            line_color="red",
            annotation_text=f"threshold {threshold:.2f}",
        )
    for event in trace.backtracks:
        step = event["step"]
        dropped = len(event["discarded_ids"])
        figure.add_vrect(
            x0=step - dropped + 0.5,
            x1=step + 0.5,
            fillcolor="red",
            opacity=0.08,
            line_width=0,
            annotation_text="backtracked",
            annotation_position="top left",
        )
        figure.add_trace(
            go.Scatter(
                x=[step],
                y=[event["p_true"]],
                mode="markers",
                name="trigger",
                marker={"symbol": "star", "size": 14, "color": "red"},
                hovertemplate=(
                    f"trigger at step {step}<br>p_true {event['p_true']:.3f}<br>"
                    f"strength {event['strength']:.2f}<extra></extra>"
                ),
            )
        )
    steps = (
        trace.steps
        if unsteered is None or len(trace.steps) >= len(unsteered.steps)
        else unsteered.steps
    )
    figure.update_layout(
        title=title or f"{trace.policy}: {trace.answer[:80]!r}",
        xaxis={
            "title": "generated token",
            "tickmode": "array",
            "tickvals": list(range(len(steps))),
            "ticktext": [s.token for s in steps],
        },
        yaxis={"title": "p_true", "range": [0, 1]},
        template="plotly_white",
    )
    return figure


def trajectories(
    traces: Sequence[GenerationTrace],
    *,
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
    unsteered: Sequence[GenerationTrace] | None = None,
) -> go.Figure:
    """Many trajectories in one figure, one at a time, chosen from a drop-down menu."""
    if not traces:
        raise ValueError("no traces to plot")
    labels = list(labels or [f"prompt {i}" for i in range(len(traces))])
    panels = [
        trajectory(
            trace, threshold=threshold, unsteered=None if unsteered is None else unsteered[index]
        )
        for index, trace in enumerate(traces)
    ]
    figure = go.Figure()
    owners: list[int] = []
    for index, panel in enumerate(panels):
        for line in panel.data:
            line.visible = index == 0
            figure.add_trace(line)
            owners.append(index)
    buttons = []
    for index, panel in enumerate(panels):
        axis = panel.layout.xaxis
        buttons.append(
            {
                "label": labels[index][:60],
                "method": "update",
                "args": [
                    {"visible": [owner == index for owner in owners]},
                    {
                        "title": panel.layout.title.text,
                        "xaxis.tickvals": axis.tickvals,
                        "xaxis.ticktext": axis.ticktext,
                        "shapes": panel.layout.shapes,
                        "annotations": panel.layout.annotations,
                    },
                ],
            }
        )
    first = panels[0].layout
    figure.update_layout(
        updatemenus=[
            {
                "buttons": buttons,
                "direction": "down",
                "x": 0,
                "y": 1.25,
                "xanchor": "left",
                "yanchor": "bottom",
            }
        ],
        margin={"t": 140},
        title=first.title.text,
        xaxis=first.xaxis,
        yaxis=first.yaxis,
        shapes=first.shapes,
        annotations=first.annotations,
        template="plotly_white",
    )
    return figure


def method_comparison(
    summary: Mapping[str, Any], *, judge_pairs: Sequence[str] | None = None
) -> go.Figure:
    """Grouped bars per method: MC1/MC2/MC3 and each judge pair's True, Info, True*Info.

    ``summary`` is a ``results.json`` (fold means are plotted; error bars span the folds).
    """
    methods = summary["methods"]
    pairs = (
        list(judge_pairs)
        if judge_pairs is not None
        else sorted(
            {k for m in methods.values() for k, v in m["mean"].items() if isinstance(v, dict)}
        )
    )
    metrics: list[tuple[str, str, str | None]] = [
        ("MC1", "mc1", None),
        ("MC2", "mc2", None),
        ("MC3", "mc3", None),
    ]
    for pair in pairs:
        for label, key in (("True", "true"), ("Info", "info"), ("True*Info", "true_x_info")):
            metrics.append((f"{label}<br>({pair})", key, pair))
    figure = go.Figure()
    for name, entry in methods.items():
        means, lows, highs = [], [], []
        for _, key, pair in metrics:
            per_fold = [
                values[pair][key] if pair else values[key] for values in entry["per_fold"].values()
            ]
            mean = entry["mean"][pair][key] if pair else entry["mean"][key]
            means.append(100 * mean)
            lows.append(100 * (mean - min(per_fold)) if per_fold else 0)
            highs.append(100 * (max(per_fold) - mean) if per_fold else 0)
        figure.add_trace(
            go.Bar(
                name=name,
                x=[label for label, _, _ in metrics],
                y=means,
                error_y={"type": "data", "array": highs, "arrayminus": lows, "thickness": 1},
            )
        )
    figure.update_layout(
        barmode="group",
        title="Methods compared (mean over folds, bars span folds)",
        yaxis_title="%",
        template="plotly_white",
    )
    return figure


def sweep_lines(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str = "alpha",
    y: str = "mc2",
    group: str = "method",
    title: str | None = None,
    log_x: bool = True,
) -> go.Figure:
    """One line per ``group`` value: ``y`` against a swept hyperparameter ``x``."""
    figure = go.Figure()
    for name in dict.fromkeys(row[group] for row in rows):
        points = sorted((row[x], row[y]) for row in rows if row[group] == name)
        figure.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="lines+markers",
                name=str(name),
            )
        )
    figure.update_layout(
        title=title or f"{y} against {x}",
        xaxis_title=x,
        yaxis_title=y,
        xaxis_type="log" if log_x else "linear",
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


def save_figure(figure: go.Figure, path: str | Path, *, png: bool = True) -> list[Path]:
    """Write ``path`` as ``.html`` (always) and ``.png`` (if a renderer is available).

    PNG export needs the ``kaleido`` package and a Chrome or Chromium on the machine (on
    Debian: ``apt-get install chromium``); without them only the HTML is written and a
    warning says what to install. Returns the files written.
    """
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    html = base.with_suffix(".html")
    figure.write_html(html, include_plotlyjs="directory")  # plotly.min.js beside it: offline
    written = [html]
    if png:
        try:
            figure.write_image(base.with_suffix(".png"), width=1100, height=650, scale=1.5)
            written.append(base.with_suffix(".png"))
        except Exception as error:  # kaleido missing, or no browser for it to drive
            logger.warning(
                "PNG export of %s failed (%s); install kaleido (pip install 'fasb-lens[figures]')"
                " and a Chrome/Chromium (apt-get install chromium) for PNGs",
                base.name,
                type(error).__name__,
            )
    return written
