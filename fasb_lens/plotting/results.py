"""Figures about results: methods side by side, and calibration sweeps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fasb_lens.plotting.common import PLAIN_COLOR, STEERED_COLOR


def method_comparison(
    summary: Mapping[str, Any], *, judge_pairs: Sequence[str] | None = None
) -> go.Figure:
    """Grouped bars per method: MC1/MC2/MC3 and each judge pair's True, Info, True*Info.

    ``summary`` is a ``results.json`` (fold means are plotted; error bars span the folds).
    """
    methods = summary["policies"]
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
    group: str = "policy",
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


def direction_share(
    summary: Mapping[str, Any], *, metrics: Sequence[str] | None = None
) -> go.Figure:
    """Each method's gain over no steering next to its random-direction control's gain.

    ``summary`` is a ``results.json``; its ``direction_share`` section gives, per method and
    metric, the gain and the control's gain. The gap between the two bars is what the
    learnt direction adds; a control as high as the method means the gain comes from the
    protocol, not the direction.
    """
    shares = summary.get("direction_share", {})
    figure = go.Figure()
    first = next(iter(shares), None)
    bars = (
        ("learnt direction", "gain", STEERED_COLOR),
        ("random direction (control)", "control_gain", PLAIN_COLOR),
    )
    for method, rows in shares.items():
        chosen = [m for m in rows if metrics is None or m in metrics]
        labels = [f"{method}<br>{m}" for m in chosen]
        for name, key, color in bars:
            figure.add_trace(
                go.Bar(
                    name=name,
                    x=labels,
                    y=[100 * rows[m][key] for m in chosen],
                    marker_color=color,
                    legendgroup=key,
                    showlegend=method == first,
                )
            )
    figure.update_layout(
        barmode="group",
        title="Gain over no steering: the learnt direction vs random directions of the same scale",
        yaxis_title="gain (points)",
        template="plotly_white",
    )
    return figure


def dataset_accuracies(results: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Held-out accuracy per multiple-choice dataset and method, with a 95% interval.

    ``results`` is an ``mc_datasets.json`` (dataset -> its summary, with ``accuracy`` per
    method and ``n_test``); the interval is the normal approximation to the binomial, so
    two bars whose intervals overlap widely are not told apart by the test items.
    """
    names = list(results)
    methods = list(dict.fromkeys(m for r in results.values() for m in r["accuracy"]))
    figure = go.Figure()
    for method in methods:
        values, errors = [], []
        for name in names:
            p, n = results[name]["accuracy"].get(method), results[name]["n_test"]
            values.append(None if p is None else 100 * p)
            errors.append(0 if p is None or not n else 196 * (p * (1 - p) / n) ** 0.5)
        figure.add_trace(
            go.Bar(
                name=method,
                x=names,
                y=values,
                error_y={"type": "data", "array": errors, "thickness": 1},
            )
        )
    figure.update_layout(
        barmode="group",
        title="Held-out accuracy per dataset (bars: 95% binomial interval)",
        yaxis_title="accuracy (%)",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.15},
    )
    return figure


SWEEP_COLORS = {"fasb": STEERED_COLOR, "fixed": "#e9c46a"}


def dataset_sweeps(calibrations: Mapping[str, Any]) -> go.Figure:
    """Each multiple-choice dataset's calibration: validation accuracy against strength.

    ``calibrations`` maps a dataset to its
    :class:`~fasb_lens.evaluation.calibration.Calibration` (``calibration/{dataset}.json``
    of an ``mc-datasets`` run). One panel per dataset, one line per searched family (FASB at its
    chosen threshold), a star at the chosen strength, and a dashed line at the unsteered
    model's accuracy on the same items, so a choice that only ties or beats it by an item
    or two can be seen for what it is.
    """
    names = list(calibrations)
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
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
            color = SWEEP_COLORS.get(family, PLAIN_COLOR)
            figure.add_trace(
                go.Scatter(
                    x=[alpha for alpha, _ in points],
                    y=[accuracy for _, accuracy in points],
                    mode="lines+markers",
                    name=family,
                    legendgroup=family,
                    showlegend=col == 1,
                    line={"color": color},
                ),
                row=1,
                col=col,
            )
            figure.add_trace(
                go.Scatter(
                    x=[alpha for alpha, _ in star],
                    y=[accuracy for _, accuracy in star],
                    mode="markers",
                    marker={"symbol": "star", "size": 14, "color": color},
                    name=f"{family} chosen",
                    legendgroup=family,
                    showlegend=False,
                ),
                row=1,
                col=col,
            )
        if calibration.unsteered.get("mc"):
            figure.add_hline(
                y=100 * calibration.unsteered["mc"]["accuracy"],
                line={"dash": "dash", "color": PLAIN_COLOR},
                row=1,
                col=col,
            )
        figure.update_xaxes(type="log", title_text="alpha", row=1, col=col)
    figure.update_yaxes(title_text="validation accuracy (%)", row=1, col=1)
    figure.update_layout(
        title="Calibration per dataset (dashed: no steering; star: chosen)",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return figure
