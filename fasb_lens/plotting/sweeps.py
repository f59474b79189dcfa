"""Sweeps: a metric against a swept setting (strength, threshold, K), one line per policy
or group, the calibrated choice starred and the unsteered model dashed; and every
multiple-choice dataset's search."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fasb_lens.plotting.style import (
    CHOSEN_MARKER,
    MUTED_COLOR,
    UNSTEERED_LINE,
    finish,
    is_fraction,
    is_policy,
    metric_label,
    policy_colors,
    policy_label,
    policy_line,
    series_colors,
)


def _group_colors(names: Sequence[Hashable]) -> dict[Hashable, str]:
    """Policies' own colours when every name is a registered policy; otherwise distinct
    colours in order."""
    if names and all(is_policy(name) for name in names):
        return dict(policy_colors(names))  # type: ignore[arg-type]
    return dict(zip(names, series_colors(len(names)), strict=True))


@dataclass(frozen=True)
class _LineStyle:
    """How a sweep draws its lines: colours and legend names per group, the line shape."""

    colors: Mapping[Hashable, str]
    labels: Mapping[Hashable, str]
    shape: str
    steps: bool


def _sweep_line(figure, col, name, points, style: _LineStyle, x: str, y: str, legend: bool) -> str:
    """One group's line in panel ``col``; returns its legend name."""
    label = style.labels.get(name) or (policy_label(name) if isinstance(name, str) else str(name))
    figure.add_trace(
        go.Scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            mode="lines" if style.steps else "lines+markers",
            name=label,
            legendgroup=str(name),
            showlegend=legend,
            line={
                "color": style.colors[name],
                "dash": policy_line(name) if isinstance(name, str) else "solid",
                "shape": style.shape,
            },
            hovertemplate=f"{label}<br>{x} %{{x:.4g}}<br>{y} %{{y:.2f}}<extra></extra>",
        ),
        row=1,
        col=col,
    )
    return label


def _star(figure, col, name, label, points, at: float, style: _LineStyle, x: str) -> bool:
    """A star on the line's point at the chosen ``at``; ``False`` if the line has none."""
    hit = [p for p in points if math.isclose(p[0], at, rel_tol=1e-6, abs_tol=1e-12)]
    if not hit:
        return False
    figure.add_trace(
        go.Scatter(
            x=[hit[0][0]],
            y=[hit[0][1]],
            mode="markers",
            name=f"{label}: chosen",
            legendgroup=str(name),
            showlegend=False,
            marker={**CHOSEN_MARKER, "color": style.colors[name]},
            hovertemplate=f"{label}: chosen {x} %{{x:.4g}}<extra></extra>",
        ),
        row=1,
        col=col,
    )
    return True


def _facet_panels(
    facets: Sequence[Any], facet: str | None, facet_titles: Mapping[Any, str] | None
) -> go.Figure:
    """One panel per facet value, side by side on one y axis, titled (with a facet)."""
    titles = [
        (facet_titles or {}).get(value, f"{facet} {value}") if facet else "" for value in facets
    ]
    return make_subplots(
        rows=1,
        cols=len(facets),
        shared_yaxes=True,
        horizontal_spacing=0.05,
        subplot_titles=titles if facet else None,
    )


def _chosen_off_the_sweep(
    figure: go.Figure,
    col: int,
    missed: Mapping[float, Sequence[Hashable]],
    colors: Mapping[Hashable, str],
    log_x: bool,
) -> None:
    """A dotted vertical line at each chosen ``x`` that its line has no point at, in the
    line's colour (grey when several lines share it)."""
    for at, names in missed.items():
        figure.add_vline(
            x=math.log10(at) if log_x and at > 0 else at,  # shapes take log units
            line={
                "color": colors[names[0]] if len(names) == 1 else MUTED_COLOR,
                "dash": "dot",
                "width": 1.5,
            },
            row=1,
            col=col,
        )


def _no_steering(figure: go.Figure, col: int, level: float) -> None:
    """The unsteered model's level in panel ``col``: a dashed, labelled horizontal line."""
    figure.add_hline(
        y=level,
        line=UNSTEERED_LINE,
        annotation_text="no steering",
        annotation_position="bottom right",
        row=1,
        col=col,
    )


def _marks(chosen: Mapping[Any, float] | None, unsteered: Any) -> str | None:
    """The default subtitle: what the stars and the dashed line mean, where drawn."""
    marks = []
    if chosen:
        marks.append("star: the calibrated choice")
    if unsteered is not None:
        marks.append("dashed: no steering")
    return "; ".join(marks) if marks else None


def sweep_lines(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str = "alpha",
    y: str = "mc2",
    group: str = "policy",
    facet: str | None = None,
    title: str | None = None,
    subtitle: str | None = None,
    log_x: bool = True,
    chosen: Mapping[Any, float] | None = None,
    unsteered: float | Mapping[Any, float] | None = None,
    labels: Mapping[Any, str] | None = None,
    facet_titles: Mapping[Any, str] | None = None,
    percent: bool | None = None,
    steps: bool = False,
) -> go.Figure:
    """One line per ``group`` value: ``y`` against a swept hyperparameter ``x``.

    Args:
        rows: one dict per evaluated setting, holding ``x``, ``y``, ``group`` (and
            ``facet``).
        facet: a key whose values each get their own panel (e.g. ``"fold"``), side by
            side with one y axis.
        chosen: the calibrated ``x`` of each line, keyed by its ``group`` value (or by
            ``(facet value, group value)`` with a facet): a star where the line has that
            point, a dotted vertical line where it does not (grey when several lines
            share it).
        unsteered: the unsteered model's ``y`` (one number, or one per facet value): a
            dashed horizontal line.
        labels: a legend name per ``group`` value (default: a policy's human name, or the
            value itself).
        facet_titles: a panel title per ``facet`` value (default ``"{facet} {value}"``).
        percent: show ``y`` in percent (default: when ``y`` is a fraction, e.g. ``mc2``).
        steps: draw each line as a step function (a value holds until the next ``x``).
    Lines of registered policies take the policies' colours; other groups (K values,
    metrics) distinct colours, the same in every panel.
    """
    percent = is_fraction(y) if percent is None else percent
    scale = 100.0 if percent else 1.0
    groups = list(dict.fromkeys(row[group] for row in rows))
    facets = list(dict.fromkeys(row[facet] for row in rows)) if facet else [None]
    colors = _group_colors(groups)
    in_legend: set[Hashable] = set()
    figure = _facet_panels(facets, facet, facet_titles)
    style = _LineStyle(colors, dict(labels or {}), "hv" if steps else "linear", steps)
    for col, value in enumerate(facets, start=1):
        mine = [row for row in rows if facet is None or row[facet] == value]
        missed: dict[float, list[Hashable]] = {}
        for name in groups:
            points = sorted((row[x], scale * row[y]) for row in mine if row[group] == name)
            if not points:
                continue
            label = _sweep_line(figure, col, name, points, style, x, y, name not in in_legend)
            in_legend.add(name)
            at = (chosen or {}).get(name if facet is None else (value, name))
            if at is not None and not _star(figure, col, name, label, points, at, style, x):
                missed.setdefault(at, []).append(name)
        _chosen_off_the_sweep(figure, col, missed, colors, log_x)
        level = unsteered.get(value) if isinstance(unsteered, Mapping) else unsteered
        if level is not None:
            _no_steering(figure, col, scale * level)
        figure.update_xaxes(
            title_text=metric_label(x), type="log" if log_x else "linear", row=1, col=col
        )
    figure.update_yaxes(title_text=metric_label(y, percent=percent), row=1, col=1)
    return finish(
        figure,
        title or f"{metric_label(y, percent=False)} against {metric_label(x)}",
        subtitle=_marks(chosen, unsteered) if subtitle is None else subtitle,
        legend="right",
    )


def dataset_sweeps(calibrations: Mapping[str, Any]) -> go.Figure:
    """Each multiple-choice dataset's calibration: validation accuracy against strength.

    ``calibrations`` maps a dataset to its
    :class:`~fasb_lens.evaluation.calibration.Calibration` (``calibration/{dataset}.json``
    of an ``mc-datasets`` run). One panel per dataset, one line per searched policy (FASB
    at its chosen threshold), a star at the chosen strength, and a dashed line at the
    unsteered model's accuracy on the same items, so a choice that only ties or beats it
    by an item or two can be seen for what it is.
    """
    names = list(calibrations)
    families = list(
        dict.fromkeys(f for c in calibrations.values() for f in c.strengths.get("mc", {}))
    )
    colors = policy_colors(families)
    figure = make_subplots(
        rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.03
    )
    for col, name in enumerate(names, start=1):
        calibration = calibrations[name]
        for family, chosen in calibration.strengths.get("mc", {}).items():
            rows = [row for row in calibration.sweep if row["policy"] == family]
            thresholded = any(row["threshold"] is not None for row in rows)
            at = calibration.thresholds.get("mc") if thresholded else None
            points = sorted(
                (row["alpha"], 100 * row["accuracy"])
                for row in rows
                if at is None or math.isclose(row["threshold"], at, rel_tol=1e-6)
            )
            star = [(alpha, a) for alpha, a in points if math.isclose(alpha, chosen, rel_tol=1e-6)]
            label = policy_label(family)
            figure.add_trace(
                go.Scatter(
                    x=[alpha for alpha, _ in points],
                    y=[accuracy for _, accuracy in points],
                    mode="lines+markers",
                    name=label,
                    legendgroup=family,
                    showlegend=col == 1,
                    line={"color": colors[family]},
                    hovertemplate=f"{label}<br>α %{{x:.4g}}: %{{y:.1f}}%<extra></extra>",
                ),
                row=1,
                col=col,
            )
            figure.add_trace(
                go.Scatter(
                    x=[alpha for alpha, _ in star],
                    y=[accuracy for _, accuracy in star],
                    mode="markers",
                    marker={**CHOSEN_MARKER, "color": colors[family]},
                    name=f"{label}: chosen",
                    legendgroup=family,
                    showlegend=False,
                    hovertemplate=f"{label}: chosen α %{{x:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        if calibration.unsteered.get("mc"):
            figure.add_hline(
                y=100 * calibration.unsteered["mc"]["accuracy"],
                line=UNSTEERED_LINE,
                row=1,
                col=col,
            )
        figure.update_xaxes(type="log", title_text=metric_label("alpha"), row=1, col=col)
    figure.update_yaxes(title_text="validation accuracy (%)", row=1, col=1)
    return finish(
        figure,
        "Calibration per dataset: validation accuracy against strength",
        subtitle="dashed: no steering on the same items; star: the chosen strength",
        legend="bottom",
        width=max(1100, 260 * len(names)),
    )
