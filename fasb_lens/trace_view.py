"""A generation trace token by token: what the tracker read, where it triggered, what
was thrown away and what was written instead.

FASB reads ``p_true`` after every generated token; at the first check below the
threshold it throws away the last tokens and regenerates them with steering. This module
turns a trace (a :class:`~fasb_lens.generation.GenerationTrace`) into **segments** - one
per generated token, in the order they were generated, plus one where each trigger
happened - and draws them three ways: HTML for Jupyter (a trace displays itself), ANSI
colours for a terminal, and plain text that marks the same things with brackets.

A token's colour is the reading it was chosen from (the state after the token before
it), on a diverging scale centred on the threshold (0.5 without one): orange below it
(the tracker reads the answer drifting from the truth), white at it, teal above it, with
a square-root ramp so that readings near the threshold, where decisions are made, differ
visibly. Struck-through tokens were discarded by a backtrack; underlined (outlined) ones
were generated with steering. The module imports nothing heavy and no other fasb_lens
module: it reads a trace through the attributes named in :class:`TraceLike`, so the
plots (:func:`fasb_lens.plotting.token_view`) and the command line share it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Palette = Literal["none", "256", "truecolor"]
"""How text is coloured: not at all (brackets only), 256 colours, or 24-bit colour."""

RGB = tuple[int, int, int]
LOW_RGB: RGB = (231, 111, 81)  # below the centre: the figures' "false" colour
MID_RGB: RGB = (247, 247, 247)
HIGH_RGB: RGB = (42, 157, 143)  # above the centre: the figures' "true" colour
NO_READING_RGB: RGB = (215, 215, 215)
STEERED_COLOR = "#264653"
TRIGGER_COLOR = "#c0392b"
TRIGGER_MARK = "↺"
NEWLINE_MARK = "⏎"


class StepLike(Protocol):
    """What the view reads of one step (:class:`fasb_lens.generation.Step`)."""

    step: int
    token: str
    p_true: float | None
    strength: float
    checked: bool
    kept: bool


class TraceLike(Protocol):
    """What the view reads of a trace (:class:`fasb_lens.generation.GenerationTrace`)."""

    policy: str

    @property
    def steps(self) -> Sequence[StepLike]: ...

    @property
    def backtracks(self) -> Sequence[Mapping[str, Any]]: ...


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class TokenSegment:
    """One generated token: its text, the reading it was chosen from, and its fate.

    ``kept`` is False for a token a backtrack threw away; ``strength`` above 0 means it
    was generated with steering; ``checked`` means the policy compared this step's
    reading with its threshold.
    """

    step: int
    text: str
    p_true: float | None
    strength: float
    kept: bool = True
    checked: bool = False

    @property
    def steered(self) -> bool:
        return self.strength > 0

    @property
    def shown(self) -> str:
        """The text with newlines, tabs and empty tokens made visible."""
        text = self.text.replace("\r", "").replace("\t", "⇥").replace("\n", NEWLINE_MARK)
        return text or "∅"


@dataclass(frozen=True)
class TriggerSegment:
    """A check below the threshold, right after the token of step ``step``: the
    ``discarded`` tokens before it were thrown away and what follows was generated with
    steering at ``strength``."""

    step: int
    p_true: float
    strength: float
    discarded: int
    kept_tokens: int

    @property
    def shown(self) -> str:
        return f"{TRIGGER_MARK} p={self.p_true:.2f}"


Segment = TokenSegment | TriggerSegment


def token_segments(trace: TraceLike) -> list[Segment]:
    """Every step of ``trace`` as a :class:`TokenSegment`, discarded ones included, in
    the order they were generated, with a :class:`TriggerSegment` after each step whose
    check triggered a backtrack."""
    triggers: dict[int, list[Mapping[str, Any]]] = {}
    for event in trace.backtracks:
        triggers.setdefault(int(event["step"]), []).append(event)
    segments: list[Segment] = []
    for step in trace.steps:
        segments.append(
            TokenSegment(step.step, step.token, step.p_true, step.strength, step.kept, step.checked)
        )
        for event in triggers.get(step.step, ()):
            segments.append(
                TriggerSegment(
                    step.step,
                    float(event["p_true"]),
                    float(event["strength"]),
                    len(event.get("discarded_ids", ())),
                    int(event.get("kept_tokens", 0)),
                )
            )
    return segments


@dataclass(frozen=True)
class TraceView:
    """One run drawn as a block: a label, a one-line summary and its segments."""

    label: str
    summary: str
    segments: list[Segment]

    @property
    def tokens(self) -> list[TokenSegment]:
        return [s for s in self.segments if isinstance(s, TokenSegment)]

    @property
    def triggers(self) -> list[TriggerSegment]:
        return [s for s in self.segments if isinstance(s, TriggerSegment)]

    @property
    def strength(self) -> float:
        """The largest strength any token was generated with (0: none steered)."""
        return max((s.strength for s in self.tokens), default=0.0)


def _summary(segments: list[Segment]) -> str:
    tokens = [s for s in segments if isinstance(s, TokenSegment)]
    triggers = [s for s in segments if isinstance(s, TriggerSegment)]
    readings = [s.p_true for s in tokens if s.p_true is not None]
    if triggers:
        parts = [
            f"triggered after step {t.step} (p_true {t.p_true:.2f}), threw away "
            f"{t.discarded} token{'s' * (t.discarded != 1)}, steered at strength {t.strength:.2f}"
            for t in triggers
        ]
        return "; ".join(parts)
    strengths = {s.strength for s in tokens if s.steered}
    if strengths:
        return f"steered at strength {max(strengths):.2f} throughout"
    checks = sum(s.checked for s in tokens)
    result = f"no trigger in {checks} check{'s' * (checks != 1)}" if checks else "not steered"
    return f"{result}, lowest p_true {min(readings):.2f}" if readings else f"{result}, no readings"


def trace_views(trace: TraceLike, unsteered: TraceLike | None = None) -> list[TraceView]:
    """The blocks to draw: ``unsteered`` first when given (the same prompt generated
    without steering), then ``trace``."""
    views = []
    for run, label in ((unsteered, "unsteered"), (trace, trace.policy)):
        if run is not None:
            segments = token_segments(run)
            views.append(TraceView(label, _summary(segments), segments))
    return views


# --------------------------------------------------------------------------- colours


def _scale(p_true: float, centre: float) -> tuple[bool, float]:
    """Which side of ``centre`` a reading lies on (True: below) and how far towards the
    end of the scale, from 0 (at the centre) to 1 (at 0 or 1), on a square-root ramp."""
    p = min(max(float(p_true), 0.0), 1.0)
    if p < centre:
        return True, ((centre - p) / centre) ** 0.5
    return False, ((p - centre) / (1 - centre)) ** 0.5 if centre < 1 else 0.0


def p_true_rgb(p_true: float | None, centre: float = 0.5) -> RGB:
    """The colour of a reading on the diverging scale: white at ``centre``, deepening to
    orange at 0 and to teal at 1 (grey when nothing was read)."""
    if p_true is None:
        return NO_READING_RGB
    below, t = _scale(p_true, centre)
    end = LOW_RGB if below else HIGH_RGB
    return tuple(round(m + (e - m) * t) for m, e in zip(MID_RGB, end, strict=True))  # type: ignore[return-value]


def diverging_stops(centre: float = 0.5) -> list[tuple[float, str]]:
    """The scale as (position in [0, 1], ``rgb(...)``) stops every 0.05 and at
    ``centre``, for a plotly colour scale or a CSS gradient."""
    positions = sorted({i / 20 for i in range(21)} | {min(max(centre, 0.0), 1.0)})
    return [(p, "rgb({},{},{})".format(*p_true_rgb(p, centre))) for p in positions]


def _css(rgb: RGB) -> str:
    return "rgb({},{},{})".format(*rgb)


# --------------------------------------------------------------------------- HTML

_TOKENS_STYLE = (
    "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;"
    "line-height:1.95;white-space:pre-wrap;word-break:break-word;color:#111"
)
_HEADER_STYLE = "font-family:sans-serif;font-size:12px;color:#444;margin:8px 0 2px"
_TRIGGER_STYLE = (
    f"background:{TRIGGER_COLOR};color:#fff;border-radius:3px;padding:1px 4px;margin:0 2px;"
    "font-size:11px;font-family:sans-serif"
)


def _token_style(segment: TokenSegment, centre: float) -> str:
    style = [f"background:{_css(p_true_rgb(segment.p_true, centre))}", "border-radius:2px"]
    if not segment.kept:
        style += ["text-decoration:line-through", "text-decoration-thickness:2px", "opacity:0.5"]
    if segment.steered:  # an underline drawn as a shadow, so it combines with line-through
        style.append(f"box-shadow:inset 0 -3px 0 {STEERED_COLOR}")
    return ";".join(style)


def _tooltip(segment: TokenSegment) -> str:
    reading = "none" if segment.p_true is None else f"{segment.p_true:.3f}"
    lines = [
        f"step {segment.step}",
        f"token {segment.text!r}",
        f"p_true {reading}",
        f"strength {segment.strength:.2f}",
    ]
    if segment.checked:
        lines.append("checked against the threshold")
    if not segment.kept:
        lines.append("discarded by the backtrack")
    return "\n".join(lines)


def _segment_html(segment: Segment, centre: float) -> str:
    if isinstance(segment, TriggerSegment):
        title = (
            f"trigger after step {segment.step}: p_true {segment.p_true:.3f}\n"
            f"threw away {segment.discarded} tokens, steered at strength {segment.strength:.2f}"
        )
        return (
            f'<span title="{html.escape(title)}" style="{_TRIGGER_STYLE}">'
            f"{html.escape(segment.shown)}</span>"
        )
    text = html.escape(segment.text.replace("\r", "") or "∅").replace("\n", NEWLINE_MARK + "\n")
    return (
        f'<span title="{html.escape(_tooltip(segment))}" '
        f'style="{_token_style(segment, centre)}">{text}</span>'
    )


def _legend_html(views: list[TraceView], centre: float, threshold: float | None) -> str:
    gradient = ",".join(
        f"{color} {100 * position:.0f}%" for position, color in diverging_stops(centre)
    )
    middle = f"threshold {threshold:.2f}" if threshold is not None else f"{centre:.2f}"
    items = [
        '<span style="display:inline-block;vertical-align:middle">'
        f'<span style="display:block;width:160px;height:10px;background:linear-gradient('
        f'to right,{gradient});border:1px solid #bbb"></span>'
        '<span style="display:flex;justify-content:space-between;width:162px;font-size:10px">'
        f"<span>0</span><span>{html.escape(middle)}</span><span>1</span></span></span> p_true"
    ]
    tokens = [t for view in views for t in view.tokens]
    if any(not t.kept for t in tokens):
        items.append('<span style="text-decoration:line-through;opacity:0.6">discarded</span>')
    strength = max((view.strength for view in views), default=0.0)
    if strength > 0:
        items.append(
            f'<span style="box-shadow:inset 0 -3px 0 {STEERED_COLOR}">'
            f"steered at strength {strength:.2f}</span>"
        )
    if any(view.triggers for view in views):
        items.append(f'<span style="{_TRIGGER_STYLE}">{TRIGGER_MARK}</span> trigger (backtrack)')
    return (
        '<div style="font-family:sans-serif;font-size:11px;color:#444;margin-top:8px;'
        'display:flex;gap:14px;align-items:center;flex-wrap:wrap">'
        + "".join(f"<span>{item}</span>" for item in items)
        + "</div>"
    )


def trace_html(
    trace: TraceLike, *, unsteered: TraceLike | None = None, threshold: float | None = None
) -> str:
    """The trace as self-contained HTML (inline CSS, no script): tokens coloured by
    ``p_true`` around ``threshold`` (0.5 if None), each with a tooltip (step, p_true,
    strength); discarded tokens struck through, steered ones underlined, a red mark where
    the trigger fired, ``unsteered`` as a block above, and a legend."""
    centre = 0.5 if threshold is None else threshold
    views = trace_views(trace, unsteered)
    blocks = []
    for view in views:
        header = f"<b>{html.escape(view.label)}</b> &middot; {html.escape(view.summary)}"
        body = "".join(_segment_html(segment, centre) for segment in view.segments)
        blocks.append(
            f'<div style="{_HEADER_STYLE}">{header}</div><div style="{_TOKENS_STYLE}">{body}</div>'
        )
    return (
        '<div class="fasb-lens-trace" style="max-width:900px">'
        + "".join(blocks)
        + _legend_html(views, centre, threshold)
        + "</div>"
    )


# --------------------------------------------------------------------------- text

_RESET = "\x1b[0m"
# five steps from white to each end of the scale among the 256 colours' 6x6x6 cube
_RAMP_256 = {True: (231, 223, 216, 209, 202), False: (231, 195, 152, 116, 37)}


def _sgr_background(p_true: float | None, centre: float, palette: Palette) -> str:
    if palette == "truecolor":
        return "48;2;{};{};{}".format(*p_true_rgb(p_true, centre))
    if p_true is None:
        return "48;5;252"
    below, t = _scale(p_true, centre)
    return f"48;5;{_RAMP_256[below][round(4 * t)]}"


def _ansi(segment: Segment, centre: float, palette: Palette) -> str:
    if isinstance(segment, TriggerSegment):
        return f"\x1b[1;97;41m {segment.shown} {_RESET}"
    codes = ["30", _sgr_background(segment.p_true, centre, palette)]
    if not segment.kept:
        codes += ["2", "9"]  # dim, struck through
    if segment.steered:
        codes.append("4")  # underlined
    return f"\x1b[{';'.join(codes)}m{segment.shown}{_RESET}"


def _plain(segments: Sequence[Segment]) -> str:
    """Tokens in runs of the same fate: ``[-discarded-]``, ``{steered}``,
    ``|trigger p=0.41|``; untouched text as it is."""
    parts: list[str] = []
    run: list[TokenSegment] = []

    def close() -> None:
        if run:
            text = "".join(token.shown for token in run)
            if run[0].steered:
                text = "{" + text + "}"
            parts.append(text if run[0].kept else f"[-{text}-]")
            run.clear()

    for segment in segments:
        if isinstance(segment, TriggerSegment):
            close()
            parts.append(f"|trigger p={segment.p_true:.2f}|")
        else:
            if run and (run[0].kept, run[0].steered) != (segment.kept, segment.steered):
                close()
            run.append(segment)
    close()
    return "".join(parts)


def tokens_text(
    segments: Sequence[Segment], *, centre: float = 0.5, color: Palette = "none"
) -> str:
    """One run's segments as one line of text: coloured by ``p_true`` with ANSI escape
    codes (discarded dim and struck through, steered underlined, the trigger on red), or
    with ``color="none"`` plain text that marks the same things with brackets."""
    if color == "none":
        return _plain(segments)
    return "".join(_ansi(segment, centre, color) for segment in segments)


def legend_text(
    views: Sequence[TraceView], *, threshold: float | None = None, color: Palette = "none"
) -> str:
    """One line explaining the marks (and, in colour, the ``p_true`` scale)."""
    centre = 0.5 if threshold is None else threshold
    middle = f"threshold {threshold:.2f}" if threshold is not None else f"{centre:.2f}"
    strength = max((view.strength for view in views), default=0.0)
    discarded = any(not t.kept for view in views for t in view.tokens)
    triggered = any(view.triggers for view in views)
    if color == "none":
        items = ["[-discarded-]"] if discarded else []
        items += [f"{{steered at strength {strength:.2f}}}"] if strength > 0 else []
        items += ["|trigger p=reading below the threshold|"] if triggered else []
        return "legend: " + "  ".join(items) if items else ""
    scale = "".join(
        f"\x1b[30;{_sgr_background(p, centre, color)}m {p:.2f} {_RESET}"
        for p in sorted({0.0, centre / 2, centre, (1 + centre) / 2, 1.0})
    )
    items = [f"p_true {scale} (white at {middle})"]
    items += [f"\x1b[2;9mdiscarded{_RESET}"] if discarded else []
    items += [f"\x1b[4msteered at strength {strength:.2f}{_RESET}"] if strength > 0 else []
    items += [f"\x1b[1;97;41m {TRIGGER_MARK} {_RESET} trigger"] if triggered else []
    return "  ".join(items)


def trace_text(
    trace: TraceLike,
    *,
    unsteered: TraceLike | None = None,
    threshold: float | None = None,
    color: Palette | bool = "none",
    indent: str = "",
) -> str:
    """The trace for a terminal or a log: per run a header line (label and summary) and
    its tokens (:func:`tokens_text`), then a one-line legend. ``color`` True means 24-bit
    colour, False plain text."""
    palette: Palette = ("truecolor" if color else "none") if isinstance(color, bool) else color
    centre = 0.5 if threshold is None else threshold
    views = trace_views(trace, unsteered)
    lines = []
    for view in views:
        lines.append(f"{indent}{view.label}: {view.summary}")
        lines.append(indent + tokens_text(view.segments, centre=centre, color=palette))
    legend = legend_text(views, threshold=threshold, color=palette)
    if legend:
        lines.append(indent + legend)
    return "\n".join(lines)
