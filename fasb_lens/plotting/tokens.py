"""The token view as a static figure: a generation's tokens as coloured boxes.

The same segments as :mod:`fasb_lens.trace_view` (the HTML and terminal views), drawn
with plotly so they export to PNG for a README or a paper: each token is a box as wide
as its text, filled by ``p_true`` on the diverging scale centred on the threshold,
wrapped into lines; discarded tokens are faded and struck through, steered ones outlined,
a red box marks each trigger, and the unsteered run, when given, is a block above.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import plotly.graph_objects as go

from fasb_lens.plotting.style import finish, policy_label
from fasb_lens.trace_view import (
    STEERED_COLOR,
    TRIGGER_COLOR,
    Segment,
    TokenSegment,
    TraceLike,
    TraceView,
    TriggerSegment,
    diverging_stops,
    p_true_rgb,
    trace_views,
)

LINE_CHARS = 90
"""Characters per line of boxes: about 10.8 pixels each at the figure's 1100 pixels."""
WIDTH_PX, ROW_PX, MARGIN_PX = 1100, 30, 150
FONT = {"family": "Courier New, monospace", "size": 14}
PAD, GAP, HALF_HEIGHT = 0.4, 0.15, 0.36


@dataclass(frozen=True)
class Placed:
    """A segment's box: from ``x0`` to ``x1`` (in characters) on line ``row``, in the
    block of view number ``view``."""

    segment: Segment
    x0: float
    x1: float
    row: int
    view: int

    @property
    def centre(self) -> float:
        return (self.x0 + self.x1) / 2


def layout_rows(
    views: list[TraceView], line_chars: int = LINE_CHARS
) -> tuple[list[tuple[int, TraceView]], list[Placed], int]:
    """Place every segment: boxes as wide as their text, wrapped at ``line_chars`` and
    after a newline; each view starts with a header row and ends with a blank one.
    Returns (header row of each view, the boxes, the number of rows)."""
    headers: list[tuple[int, TraceView]] = []
    placed: list[Placed] = []
    row = 0
    for index, view in enumerate(views):
        headers.append((row, view))
        row, x = row + 1, 0.0
        for segment in view.segments:
            width = len(segment.shown) + PAD
            if x > 0 and x + width > line_chars:
                row, x = row + 1, 0.0
            placed.append(Placed(segment, x, x + width, row, index))
            x += width + GAP
            if isinstance(segment, TokenSegment) and "\n" in segment.text:
                row, x = row + 1, 0.0
        row += 2 if x > 0 else 1
    return headers, placed, row


def _shapes(placed: list[Placed], centre: float) -> list[dict]:
    """A filled box per token (outlined when steered, faded when discarded), a strike
    line across each discarded token, a red box per trigger."""
    shapes: list[dict] = []
    for box in placed:
        segment = box.segment
        rect = {
            "type": "rect",
            "x0": box.x0,
            "x1": box.x1,
            "y0": box.row - HALF_HEIGHT,
            "y1": box.row + HALF_HEIGHT,
            "layer": "below",
            "line": {"width": 0},
        }
        if isinstance(segment, TriggerSegment):
            shapes.append({**rect, "fillcolor": TRIGGER_COLOR, "name": "trigger"})
            continue
        rect["fillcolor"] = "rgb({},{},{})".format(*p_true_rgb(segment.p_true, centre))
        rect["name"] = "token"
        if segment.steered:
            rect["line"] = {"color": STEERED_COLOR, "width": 2}
        if not segment.kept:
            rect["opacity"] = 0.45
        shapes.append(rect)
        if not segment.kept:
            shapes.append(
                {
                    "type": "line",
                    "name": "strike",
                    "x0": box.x0,
                    "x1": box.x1,
                    "y0": box.row,
                    "y1": box.row,
                    "line": {"color": "#333", "width": 2},
                }
            )
    return shapes


def _hover(segment: TokenSegment) -> str:
    reading = "none" if segment.p_true is None else f"{segment.p_true:.3f}"
    lines = [
        f"step {segment.step}",
        f"token {_escape(repr(segment.text))}",
        f"p_true {reading}",
        f"strength {segment.strength:.2f}",
    ]
    lines += ["checked against the threshold"] if segment.checked else []
    lines += ["discarded by the backtrack"] if not segment.kept else []
    return "<br>".join(lines)


def _escape(text: str) -> str:
    """Text for plotly, which reads tags in it: ``<``, ``>`` and ``&`` escaped."""
    return html.escape(text, quote=False)


def _label(text: str) -> str:
    """A token's text for plotly: escaped, its spaces kept."""
    return _escape(text).replace(" ", "\u00a0")


def _text_traces(placed: list[Placed], views: list[TraceView]) -> list[go.Scatter]:
    """The tokens' text (one trace per view, hover per token) and the triggers' text."""
    traces = []
    for index, view in enumerate(views):
        mine = [b for b in placed if b.view == index and isinstance(b.segment, TokenSegment)]
        tokens = [box.segment for box in mine if isinstance(box.segment, TokenSegment)]
        traces.append(
            go.Scatter(
                x=[box.centre for box in mine],
                y=[box.row for box in mine],
                mode="text",
                name=view.label,
                text=[_label(token.shown) for token in tokens],
                textfont={**FONT, "color": ["#111" if t.kept else "#666" for t in tokens]},
                hovertext=[_hover(token) for token in tokens],
                hoverinfo="text",
                showlegend=False,
            )
        )
    triggers = [box for box in placed if isinstance(box.segment, TriggerSegment)]
    if triggers:
        traces.append(
            go.Scatter(
                x=[box.centre for box in triggers],
                y=[box.row for box in triggers],
                mode="text",
                name="trigger",
                text=[_label(box.segment.shown) for box in triggers],
                textfont={**FONT, "color": "white"},
                hovertext=[
                    f"trigger after step {t.step}: p_true {t.p_true:.3f}<br>threw away "
                    f"{t.discarded} tokens, steered at strength {t.strength:.2f}"
                    for t in (box.segment for box in triggers)
                    if isinstance(t, TriggerSegment)
                ],
                hoverinfo="text",
                showlegend=False,
            )
        )
    return traces


def _colour_bar(centre: float, threshold: float | None) -> go.Scatter:
    """An invisible point whose colour bar shows the ``p_true`` scale."""
    middle = "0.5" if threshold is None else f"threshold {threshold:.2f}"
    return go.Scatter(
        x=[None],
        y=[None],
        mode="markers",
        name="p_true",
        marker={
            "color": [centre],
            "cmin": 0,
            "cmax": 1,
            "colorscale": [list(stop) for stop in diverging_stops(centre)],
            "showscale": True,
            "colorbar": {
                "title": {"text": "p_true"},
                "tickvals": [0, centre, 1],
                "ticktext": ["0", middle, "1"],
                "thickness": 14,
            },
        },
        hoverinfo="skip",
        showlegend=False,
    )


def _annotations(
    headers: list[tuple[int, TraceView]], views: list[TraceView], footer_row: int
) -> list[dict]:
    """Each block's header (label and summary) and a footer explaining the marks."""
    notes = [
        {
            "x": 0,
            "y": row,
            "xanchor": "left",
            "text": f"<b>{_escape(view.label)}</b> · {_escape(view.summary)}",
            "showarrow": False,
            "font": {"size": 13, "color": "#333"},
        }
        for row, view in headers
    ]
    marks = []
    if any(not token.kept for view in views for token in view.tokens):
        marks.append("faded and struck through: thrown away by the backtrack")
    strength = max((view.strength for view in views), default=0.0)
    if strength > 0:
        marks.append(f"outlined: generated with steering (strength up to {strength:.2f})")
    if any(view.triggers for view in views):
        marks.append("red: the check below the threshold (trigger)")
    if marks:
        notes.append(
            {
                "x": 0,
                "y": footer_row,
                "xanchor": "left",
                "text": " · ".join(marks),
                "showarrow": False,
                "font": {"size": 12, "color": "#555"},
            }
        )
    return notes


def token_view(
    trace: TraceLike,
    *,
    unsteered: TraceLike | None = None,
    threshold: float | None = None,
    line_chars: int = LINE_CHARS,
    title: str | None = None,
) -> go.Figure:
    """A generation token by token, as boxes coloured by ``p_true``.

    Args:
        trace: a :class:`~fasb_lens.generation.GenerationTrace` (or anything with its
            ``policy``, ``steps`` and ``backtracks``).
        unsteered: the same prompt generated without steering, drawn as a block above.
        threshold: the policy's threshold: the colour scale's white point (0.5 if None).
        line_chars: characters per line before the boxes wrap.
    """
    centre = 0.5 if threshold is None else threshold
    views = trace_views(trace, unsteered)
    headers, placed, n_rows = layout_rows(views, line_chars)
    figure = go.Figure([*_text_traces(placed, views), _colour_bar(centre, threshold)])
    axis = {"visible": False, "fixedrange": True}
    figure.update_layout(
        shapes=_shapes(placed, centre),
        annotations=_annotations(headers, views, n_rows),
        xaxis={**axis, "range": [-0.3, line_chars + 0.3]},
        yaxis={**axis, "range": [n_rows + 0.6, -0.6]},
        hovermode="closest",
    )
    finish(
        figure,
        title or f"{_escape(policy_label(trace.policy))}: p_true token by token",
        legend=None,
        width=WIDTH_PX,
        height=MARGIN_PX + ROW_PX * (n_rows + 1),
    )
    figure.update_layout(margin={"l": 20, "r": 20, "t": 60, "b": 20})
    return figure
