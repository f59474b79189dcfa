"""One look for every figure: a colour and a label per policy, human axis labels, one layout.

Every figure function of :mod:`fasb_lens.plotting` draws through this module, so a policy
has the same colour and name in every figure, a fraction is shown in percent with its
unit, and titles, fonts and legends sit in the same places.

* **Policies.** A policy's label and colour are its registration's (``PolicySpec.label``,
  ``.color``); a registered random-direction control (``control_of``) takes a lighter
  tint of its policy's colour and a dotted line, and a leak-free row (``NAME_question``)
  its policy's colour with a hatched bar or a dashed line. A policy registered without a
  colour (one registered in a notebook) takes one from :data:`EXTRA_COLORS`, which no
  built-in uses, chosen from its name so that it keeps it from figure to figure; within
  one figure (:func:`policy_colors`) no two policies share a colour.
* **Labels.** :func:`policy_label` ("FASB w/o backtracking", "ITI, random directions"),
  :func:`metric_label` ("True×Info (%)", "strength α").
* **Layout.** :data:`TEMPLATE` (font, colours, grid) and :func:`finish` (title with an
  optional second line, legend placement, size).
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Iterable, Sequence

import plotly.graph_objects as go
import plotly.io as pio

FONT_FAMILY = "Helvetica Neue, Helvetica, Arial, Liberation Sans, sans-serif"
FONT_SIZE = 14
TEXT_COLOR = "#222222"
MUTED_COLOR = "#666666"
WIDTH, HEIGHT = 1100, 650
"""The default size of a figure (and of its PNG), in pixels."""

TRUE_COLOR, FALSE_COLOR = "#2a9d8f", "#e76f51"
"""True and false answers (distributions, projections)."""
STEERED_COLOR, PLAIN_COLOR = "#264653", "#9a9a9a"
"""A steered run and the unsteered one (trajectories, the tracker's readings)."""
THRESHOLD_COLOR = "#c0392b"
"""The threshold line and the trigger that crossed it."""
UNSTEERED_LINE = {"color": "#555555", "dash": "dash", "width": 1.5}
"""The horizontal line at the unsteered model's value in a sweep."""
CHOSEN_MARKER = {"symbol": "star", "size": 16, "line": {"color": "white", "width": 1}}
"""The marker at the calibrated (chosen) setting of a sweep."""

OUTLINE_COLOR, HALO_COLOR = "#111111", "white"
"""Anchored heads on a heatmap: a dark outline on a white halo, visible on every colour
of a sequential or a diverging scale (red and blue cells alike)."""
OUTLINE_WIDTH, HALO_WIDTH = 2.0, 5.0
ANCHORED_COLOR = "#1b7837"
"""Anchored heads as points (a scatter of heads): green, away from red and blue."""
DIVERGING_SCALE = "RdBu"
"""Effects centred on 0: red below, white at 0, blue above."""
SEQUENTIAL_SCALE = "Viridis"

EXTRA_COLORS = (
    "#8c564b",
    "#b8a600",
    "#17becf",
    "#d62728",
    "#6b6ecf",
    "#bd9e39",
    "#ad494a",
    "#637939",
    "#e377c2",
    "#393b79",
)
"""Colours for policies without one of their own, none used by a built-in policy."""

CONTROL_TINT = 0.55
"""How far a control's colour is mixed towards white from its policy's."""
LEAK_FREE_SUFFIX = "_question"
"""The suffix of a leak-free multiple-choice row (``fasb_question``)."""

METRIC_LABELS = {
    "mc1": "MC1",
    "mc2": "MC2",
    "mc3": "MC3",
    "true": "True",
    "info": "Info",
    "true_x_info": "True×Info",
    "accuracy": "accuracy",
    "tpr": "untruthful answers caught (TPR)",
    "fpr": "truthful answers steered (FPR)",
    "triggered": "answers triggered",
    "j": "Youden's J",
    "alpha": "strength α",
    "threshold": "threshold β",
    "top_k": "anchored heads K",
    "p_true": "p_true (tracker's probability of truthful)",
    "margin": "true-vs-false log-prob margin",
}
FRACTIONS = frozenset(
    {"mc1", "mc2", "mc3", "true", "info", "true_x_info", "accuracy", "tpr", "fpr", "triggered"}
)
"""Metrics stored as fractions in [0, 1] and shown in percent."""


def _spec(name: str):
    """The policy's registration, or ``None`` for a name no registration knows."""
    from fasb_lens.policies import POLICIES

    return POLICIES.get(name) if name in POLICIES else None


def registered_colors() -> set[str]:
    """The colours registrations give their policies (no other policy takes one)."""
    from fasb_lens.policies import POLICIES

    return {spec.color for spec in POLICIES if spec.color is not None}


def _parts(name: str) -> tuple[str, bool, bool]:
    """``(policy, control, leak_free)``: the policy whose colour and label ``name`` derives
    from, whether it is a random-direction control of it, and whether it is a leak-free
    multiple-choice row (``NAME_question``, of a policy or of a control)."""
    leak_free = False
    if _spec(name) is None and name.endswith(LEAK_FREE_SUFFIX):
        if _spec(name[: -len(LEAK_FREE_SUFFIX)]) is not None:
            name, leak_free = name[: -len(LEAK_FREE_SUFFIX)], True
    spec = _spec(name)
    if spec is not None and spec.control_of:
        return spec.control_of, True, leak_free
    return name, False, leak_free


def is_policy(name: object) -> bool:
    """Whether ``name`` is a registered policy (or a leak-free row of one)."""
    return isinstance(name, str) and (_spec(name) is not None or _parts(name)[2])


def policy_label(name: str) -> str:
    """A policy's human name: ``fasb_no_backtrack`` -> "FASB w/o backtracking",
    ``fixed_random`` -> "ITI, random directions", ``fasb_question`` -> "FASB (leak-free)";
    an unknown name is shown as it is."""
    base, control, leak_free = _parts(name)
    spec = _spec(base)
    label = (spec.label if spec is not None else None) or base
    if control:
        label += ", random directions"
    return f"{label} (leak-free)" if leak_free else label


def policy_line(name: str) -> str:
    """A policy's line style: solid, dotted for a control, dashed for a leak-free row."""
    _, control, leak_free = _parts(name)
    return {(True, True): "dashdot", (True, False): "dot", (False, True): "dash"}.get(
        (control, leak_free), "solid"
    )


def policy_pattern(name: str) -> str:
    """A policy's bar fill pattern: hatched for a leak-free row, plain otherwise."""
    return "/" if _parts(name)[2] else ""


def _own_color(name: str) -> str | None:
    """The colour a policy has whatever else is drawn (``None``: it has none)."""
    spec = _spec(name)
    return spec.color if spec is not None else None


def _hashed(name: str, taken: set[str]) -> str:
    """An extra colour chosen from ``name`` (stable from run to run), the next free one
    if that is ``taken``; past the palette, a hue not near any taken one."""
    start = zlib.crc32(name.encode()) % len(EXTRA_COLORS)
    for step in range(len(EXTRA_COLORS)):
        color = EXTRA_COLORS[(start + step) % len(EXTRA_COLORS)]
        if color not in taken:
            return color
    for index in range(len(taken) + 1):
        color = _hue(start + index, len(taken) + 1)
        if color not in taken:
            return color
    raise AssertionError("unreachable: more hues than taken colours")


def _hue(index: int, count: int) -> str:
    red, green, blue = colorsys.hls_to_rgb((index % count) / count, 0.42, 0.65)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (red, green, blue)))


def tint(color: str, amount: float = CONTROL_TINT) -> str:
    """``color`` (``#rrggbb``) mixed ``amount`` of the way to white."""
    channels = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(c + (255 - c) * amount) for c in channels]
    return "#{:02x}{:02x}{:02x}".format(*mixed)


def policy_colors(names: Iterable[str]) -> dict[str, str]:
    """A colour for each policy of one figure, no two alike.

    Built-in policies keep their fixed colours; a control takes a tint of its policy's
    colour, a leak-free row its policy's colour (told apart by :func:`policy_pattern` and
    :func:`policy_line`); any other policy a colour of :data:`EXTRA_COLORS` chosen from
    its name, the next free one when another policy of the figure has it.
    """
    names = list(dict.fromkeys(names))
    bases = list(dict.fromkeys(_parts(name)[0] for name in names))
    base_colors = {base: color for base in bases if (color := _own_color(base)) is not None}
    taken = set(base_colors.values()) | {tint(c) for c in base_colors.values()}
    taken |= registered_colors()
    for base in bases:
        if base not in base_colors:
            base_colors[base] = _hashed(base, taken)
            taken |= {base_colors[base], tint(base_colors[base])}
    colors = {}
    for name in names:
        base, control, _ = _parts(name)
        colors[name] = tint(base_colors[base]) if control else base_colors[base]
    return colors


def policy_color(name: str) -> str:
    """One policy's colour when drawn alone (:func:`policy_colors` for several)."""
    return policy_colors([name])[name]


def series_colors(count: int) -> list[str]:
    """``count`` distinct colours for series that are not policies (K values, metrics):
    a qualitative palette, then evenly spaced hues, never a repeat."""
    palette = ["#1f5fbf", "#e07b00", "#2e9e44", "#c2185b", "#7b3294", "#0f8b8d", "#8c564b"]
    if count <= len(palette):
        return palette[:count]
    return [_hue(index, count) for index in range(count)]


def is_fraction(key: str) -> bool:
    """Whether ``key`` (a metric's name, or a label ending in it) is a fraction shown
    in percent."""
    return bool(key) and (key in FRACTIONS or key.split()[-1] in FRACTIONS)


def metric_label(key: str, *, percent: bool | None = None) -> str:
    """A metric's human label with its unit: ``true_x_info`` -> "True×Info (%)",
    ``alpha`` -> "strength α"; ``percent`` defaults to :func:`is_fraction`."""
    label = METRIC_LABELS.get(key, key.replace("_", " "))
    if percent if percent is not None else is_fraction(key):
        label += " (%)"
    return label


def folds_text(folds: Sequence[int | str]) -> str:
    """``[0]`` -> "fold 0", ``[0, 1]`` -> "folds 0 and 1", ``[0, 1, 2]`` -> "folds 0, 1, 2"."""
    folds = [str(fold) for fold in folds]
    if len(folds) == 1:
        return f"fold {folds[0]}"
    if len(folds) == 2:
        return f"folds {folds[0]} and {folds[1]}"
    return "folds " + ", ".join(folds)


def _template() -> go.layout.Template:
    """plotly_white with the package's font, title, legend and colours."""
    template = go.layout.Template(pio.templates["plotly_white"])
    template.layout.update(
        font={"family": FONT_FAMILY, "size": FONT_SIZE, "color": TEXT_COLOR},
        title={"font": {"size": 19}, "x": 0.0, "xref": "paper", "xanchor": "left"},
        legend={"font": {"size": 13}, "bgcolor": "rgba(255,255,255,0.8)"},
        hoverlabel={"font": {"family": FONT_FAMILY, "size": 13}},
        colorway=list(EXTRA_COLORS),
        margin={"l": 80, "r": 40, "t": 100, "b": 80},
    )
    template.layout.xaxis.update(title={"font": {"size": 15}}, automargin=True)
    template.layout.yaxis.update(title={"font": {"size": 15}}, automargin=True)
    template.layout.annotationdefaults = {"font": {"size": 13}}
    return template


TEMPLATE = _template()
"""The layout template every figure uses."""


def finish(
    figure: go.Figure,
    title: str,
    *,
    subtitle: str | None = None,
    legend: str | None = "right",
    width: int | None = None,
    height: int | None = None,
) -> go.Figure:
    """Give ``figure`` the package's template, its title (and a smaller grey second line,
    ``subtitle``), the legend ``"right"`` of the plot, ``"bottom"`` below it or ``None``
    (hidden), and a fixed size where given (otherwise the HTML fills its window and the
    PNG is :data:`WIDTH` x :data:`HEIGHT`)."""
    layout: dict = {"template": TEMPLATE, "title": {"text": title}}
    if subtitle is not None:
        layout["title"]["subtitle"] = {"text": subtitle, "font": {"color": MUTED_COLOR}}
    if width is not None:
        layout["width"] = width
    if height is not None:
        layout["height"] = height
    if legend is None:
        layout["showlegend"] = False
    elif legend == "bottom":
        layout["legend"] = {"orientation": "h", "x": 0.0, "y": -0.18, "yanchor": "top"}
    elif legend == "right":
        layout["legend"] = {"orientation": "v", "x": 1.02, "y": 1.0, "yanchor": "top"}
    else:
        raise ValueError(f"legend must be 'right', 'bottom' or None, got {legend!r}")
    figure.update_layout(**layout)
    return figure
