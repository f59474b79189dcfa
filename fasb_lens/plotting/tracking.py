"""Figures about the tracker: p_true distributions and trajectories token by token."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from fasb_lens.generation import GenerationTrace
from fasb_lens.plotting.common import PLAIN_COLOR, STEERED_COLOR


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
