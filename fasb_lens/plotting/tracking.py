"""Figures about the tracker: p_true distributions and trajectories token by token."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from fasb_lens.generation import GenerationTrace
from fasb_lens.plotting.style import (
    PLAIN_COLOR,
    STEERED_COLOR,
    THRESHOLD_COLOR,
    finish,
    metric_label,
    policy_color,
    policy_label,
)


def p_true_distributions(
    question: Sequence[float],
    generation: Sequence[float],
    *,
    threshold: float | None = None,
    labels: tuple[str, str] = ("question only", "during generation"),
    title: str = "The tracker's p_true from the question alone vs during generation",
    subtitle: str | None = None,
) -> go.Figure:
    """Overlaid histograms of two sets of tracker readings (the share of each set's
    readings per bin, in percent), with the threshold. Name the tracker (and the folds)
    in ``title``: two trackers' figures should not share one."""
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
                histnorm="percent",
                hovertemplate=f"{name}<br>p_true %{{x}}: %{{y:.1f}}% of readings<extra></extra>",
            )
        )
    if threshold is not None:
        figure.add_vline(
            x=threshold,
            line={"dash": "dash", "color": THRESHOLD_COLOR, "width": 2},
            annotation_text=f"threshold β = {threshold:.2f}",
            annotation_position="top right",
        )
    figure.update_layout(barmode="overlay")
    figure.update_xaxes(title_text=metric_label("p_true"), range=[0, 1])
    figure.update_yaxes(title_text="share of readings (%)")
    return finish(figure, title, subtitle=subtitle, legend="bottom")


def _trajectory_traces(trace: GenerationTrace, name: str, color: str) -> list[go.Scatter]:
    """One line per segment of a generation: what was kept and what was thrown away.

    Each point carries its own run's token (hover text), so two runs that wrote different
    tokens at the same step each show theirs.
    """
    steps = trace.steps
    x = [step.step for step in steps]
    y = [step.p_true for step in steps]
    text = [html.escape(repr(step.token), quote=False) for step in steps]
    strength = [step.strength for step in steps]
    kept = [step.kept for step in steps]
    hover = "step %{x}<br>token %{text}<br>p_true %{y:.3f}<br>strength %{customdata:.2f}<extra>"
    lines = [
        go.Scatter(
            x=x,
            y=[v if k else None for v, k in zip(y, kept, strict=True)],
            mode="lines+markers",
            name=name,
            line={"color": color},
            text=text,
            customdata=strength,
            hovertemplate=hover + html.escape(name, quote=False) + "</extra>",
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
                customdata=strength,
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

    The x-axis counts generation steps; hovering a point shows the token its own run
    generated there (two runs differ after a trigger). The dashed line is the threshold;
    a star marks the check that triggered; the backtracked span is shaded and its tokens
    drawn dotted; ``unsteered`` (e.g. the same prompt under policy ``none``) is overlaid
    in grey. :func:`~fasb_lens.plotting.token_view` shows the same run as text.
    """
    figure = go.Figure()
    if unsteered is not None:
        for line in _trajectory_traces(unsteered, policy_label("none"), PLAIN_COLOR):
            figure.add_trace(line)
    color = STEERED_COLOR if trace.policy == "none" else policy_color(trace.policy)
    for line in _trajectory_traces(trace, policy_label(trace.policy), color):
        figure.add_trace(line)
    if threshold is not None:
        figure.add_hline(
            y=threshold,
            line={"dash": "dash", "color": THRESHOLD_COLOR, "width": 1.5},
            annotation_text=f"threshold β = {threshold:.2f}",
        )
    for event in trace.backtracks:
        step = event["step"]
        dropped = len(event["discarded_ids"])
        figure.add_vrect(
            x0=step - dropped + 0.5,
            x1=step + 0.5,
            fillcolor=THRESHOLD_COLOR,
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
                marker={"symbol": "star", "size": 15, "color": THRESHOLD_COLOR},
                hovertemplate=(
                    f"trigger at step {step}<br>p_true {event['p_true']:.3f}<br>"
                    f"strength {event['strength']:.2f}<extra></extra>"
                ),
            )
        )
    n_steps = max(len(trace.steps), len(unsteered.steps) if unsteered is not None else 0)
    figure.update_layout(
        xaxis={"title": "generation step", "tick0": 0, "dtick": max(1, round(n_steps / 20))},
        yaxis={"title": metric_label("p_true"), "range": [0, 1]},
        hovermode="x unified",
    )
    answer = html.escape(trace.answer[:80], quote=False)
    return finish(figure, title or f"{policy_label(trace.policy)}: {answer!r}", legend="right")


def trajectories(
    traces: Sequence[GenerationTrace],
    *,
    labels: Sequence[str] | None = None,
    threshold: float | Sequence[float] | None = None,
    unsteered: Sequence[GenerationTrace] | None = None,
    titles: Sequence[str] | None = None,
) -> go.Figure:
    """Many trajectories in one figure, one at a time, chosen from a drop-down menu
    (``labels``: the menu's entries; ``titles``: each one's title, default its policy
    and answer; ``threshold``: one for all, or one per trace)."""
    if not traces:
        raise ValueError("no traces to plot")
    labels = list(labels or [f"prompt {i}" for i in range(len(traces))])
    panels = [
        trajectory(
            trace,
            threshold=threshold if not isinstance(threshold, Sequence) else threshold[index],
            unsteered=None if unsteered is None else unsteered[index],
            title=None if titles is None else titles[index],
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
                        "xaxis.dtick": axis.dtick,
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
        xaxis=first.xaxis,
        yaxis=first.yaxis,
        shapes=first.shapes,
        annotations=first.annotations,
        hovermode=first.hovermode,
    )
    finish(figure, first.title.text, legend="right")
    figure.update_layout(margin={"t": 150})
    return figure
