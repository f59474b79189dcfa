"""Figures about results: policies side by side, the direction's share of a gain, the
multiple-choice datasets' accuracies (sweeps are :mod:`fasb_lens.plotting.sweeps`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fasb_lens.evaluation.uncertainty import MC_METRICS, PAIR_METRICS
from fasb_lens.plotting.style import (
    LEAK_FREE_SUFFIX,
    UNSTEERED_LINE,
    finish,
    metric_label,
    policy_colors,
    policy_label,
    policy_pattern,
)


def _policies(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """A summary's policies (``methods`` in summaries written before the rename)."""
    return summary["policies"] if "policies" in summary else summary["methods"]


def _pair_label(pair: str) -> str:
    """``"bleu-acc x info-check"`` -> ``"bleu-acc × info-check"``."""
    return pair.replace(" x ", " × ")


def _judge_pairs(policies: Mapping[str, Any]) -> list[str]:
    """The judge pairs a summary scored (the sections of the policies' means), sorted."""
    return sorted(
        {k for m in policies.values() for k, v in m["mean"].items() if isinstance(v, dict)}
    )


def _bar_values(
    entries: Sequence[Mapping[str, Any]], key: str, pair: str | None
) -> tuple[list[float | None], list[float], list[float]]:
    """Each policy's bar on one metric in percent, and its whisker's reach below and
    above the bar (0 where either end is missing)."""
    means: list[float | None] = []
    lows, highs = [], []
    for entry in entries:
        mean = _value(entry["mean"], key, pair)
        low, high = _whisker(entry, key, pair)
        means.append(None if mean is None else 100 * mean)
        lows.append(100 * (mean - low) if mean is not None and low is not None else 0.0)
        highs.append(100 * (high - mean) if mean is not None and high is not None else 0.0)
    return means, lows, highs


def method_comparison(
    summary: Mapping[str, Any], *, judge_pairs: Sequence[str] | None = None
) -> go.Figure:
    """Every policy's MC1/MC2/MC3 and each judge pair's True, Info and True×Info.

    ``summary`` is a ``results.json``. One panel per metric (a row of multiple choice, a
    row per judge pair), the policies as horizontal bars in one colour each, named once
    on the left; a bar is the mean over folds and its whisker spans the folds. The dashed
    line in each panel is the unsteered model (policy ``none``), so a gain reads as the
    distance from it.
    """
    policies = _policies(summary)
    pairs = list(judge_pairs) if judge_pairs is not None else _judge_pairs(policies)
    rows: list[list[tuple[str, str | None]]] = [[(key, None) for key in MC_METRICS]]
    rows += [[(key, pair) for key in PAIR_METRICS] for pair in pairs]
    names = list(policies)
    colors = policy_colors(names)
    members = [  # the policies with a value in each row (leak-free rows: multiple choice)
        [n for n in names if any(_value(policies[n]["mean"], k, p) is not None for k, p in row)]
        for row in rows
    ]
    sizes = [max(1, len(mine)) for mine in members]
    figure = make_subplots(
        rows=len(rows),
        cols=3,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.3 / len(rows),
        row_heights=[size / sum(sizes) for size in sizes],
        subplot_titles=[
            metric_label(key, percent=False) + ("" if pair is None else f" · {_pair_label(pair)}")
            for row in rows
            for key, pair in row
        ],
    )
    for r, (row, mine) in enumerate(zip(rows, members, strict=True), start=1):
        for c, (key, pair) in enumerate(row, start=1):
            means, lows, highs = _bar_values([policies[name] for name in mine], key, pair)
            figure.add_trace(
                go.Bar(
                    x=means,
                    y=[policy_label(name) for name in mine],
                    orientation="h",
                    name=metric_label(key, percent=False),
                    marker={
                        "color": [colors[name] for name in mine],
                        "pattern": {"shape": [policy_pattern(name) for name in mine]},
                    },
                    error_x={"type": "data", "array": highs, "arrayminus": lows, "thickness": 1},
                    hovertemplate="%{y}: %{x:.1f}%<extra></extra>",
                    showlegend=False,
                ),
                row=r,
                col=c,
            )
            plain = means[mine.index("none")] if "none" in mine else None
            if plain is not None:
                figure.add_vline(x=plain, line=UNSTEERED_LINE, row=r, col=c)
            figure.update_xaxes(title_text="%" if r == len(rows) else None, row=r, col=c)
    figure.update_yaxes(autorange="reversed")
    return finish(
        figure,
        "Policies compared: mean over folds, whiskers the 95% interval",
        subtitle="dashed: no steering; hatched: the leak-free multiple-choice protocol "
        "(a run without intervals: whiskers span the folds)",
        legend=None,
        height=140 + 60 * len(rows) + 22 * sum(sizes),
    )


def _whisker(entry: Mapping[str, Any], key: str, pair: str | None) -> tuple[Any, Any]:
    """A policy's whisker on one metric: its 95% interval where the summary has one
    (``ci95``), else the lowest and highest fold."""
    interval = entry.get("ci95", {}).get(key if pair is None else f"{pair}: {key}")
    if interval is not None:
        return interval[0], interval[1]
    folds = [_value(v, key, pair) for v in entry["per_fold"].values()]
    folds = [v for v in folds if v is not None]
    return (min(folds), max(folds)) if folds else (None, None)


def _value(values: Mapping[str, Any], key: str, pair: str | None) -> float | None:
    """A metric of one fold (or of the mean): ``values[key]`` or ``values[pair][key]``;
    ``None`` when missing or NaN (a leak-free row has no generation)."""
    source = values if pair is None else values.get(pair)
    value = source.get(key) if isinstance(source, Mapping) else None
    return None if value is None or math.isnan(float(value)) else float(value)


def _control(name: str) -> str:
    """The random-direction control of a policy (of a leak-free row: the control's
    leak-free row)."""
    from fasb_lens.policies import POLICIES

    controls = {spec.control_of: spec.name for spec in POLICIES if spec.control_of}
    if name not in controls and name.endswith(LEAK_FREE_SUFFIX):
        base = name[: -len(LEAK_FREE_SUFFIX)]
        if base in controls:
            return controls[base] + LEAK_FREE_SUFFIX
    return controls.get(name, f"{name}_random")


def _metric_name(key: str) -> str:
    """A direction-share metric's short label: ``mc2`` -> "MC2", ``"bleu-acc x
    info-check: true_x_info"`` -> "True×Info<br>(bleu)" (the truth judge)."""
    pair, _, metric = key.rpartition(": ")
    label = metric_label(metric, percent=False)
    return f"{label}<br>({pair.split(' x ')[0].removesuffix('-acc')})" if pair else label


def direction_share(
    summary: Mapping[str, Any], *, metrics: Sequence[str] | None = None
) -> go.Figure:
    """Each policy's gain over no steering next to its random-direction control's gain.

    ``summary`` is a ``results.json``; its ``direction_share`` section gives, per policy
    and metric, the gain and the control's gain. One panel per policy; in each, the
    policy's bar (its colour) beside its control's (the lighter tint). The gap between
    the two is what the learnt direction adds; a control as high as the policy means the
    gain comes from the protocol, not the direction.
    """
    shares = summary.get("direction_share", {})
    names = list(shares)
    control_names = {name: _control(name) for name in names}
    colors = policy_colors([*names, *control_names.values()])
    figure = make_subplots(
        rows=1,
        cols=max(1, len(names)),
        shared_yaxes=True,
        horizontal_spacing=0.05,
        subplot_titles=[policy_label(name) for name in names] or None,
    )
    for col, name in enumerate(names, start=1):
        rows = shares[name]
        chosen = [m for m in rows if metrics is None or m in metrics]
        x = [_metric_name(m) for m in chosen]
        control = control_names[name]
        for bar, key in ((name, "gain"), (control, "control_gain")):
            label = policy_label(bar)
            figure.add_trace(
                go.Bar(
                    name=label,
                    x=x,
                    y=[100 * rows[m][key] for m in chosen],
                    marker={"color": colors[bar], "pattern": {"shape": policy_pattern(bar)}},
                    customdata=chosen,
                    hovertemplate=f"{label}<br>%{{customdata}}: %{{y:+.1f}} points<extra></extra>",
                ),
                row=1,
                col=col,
            )
    figure.update_yaxes(title_text="gain over no steering (points)", row=1, col=1)
    figure.update_yaxes(zeroline=True, zerolinecolor="#888")
    figure.update_xaxes(tickangle=0, tickfont={"size": 12})
    figure.update_layout(barmode="group")
    return finish(
        figure,
        "Gain over no steering: learnt directions vs random directions of the same scale",
        subtitle="the gap between a policy and its control is what the learnt direction adds",
        legend="bottom",
        width=max(1100, 500 * len(names)),
    )


def dataset_accuracies(results: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Held-out accuracy per multiple-choice dataset and policy, with a 95% interval.

    ``results`` is an ``mc_datasets.json`` (dataset -> its summary, with ``accuracy`` per
    policy and ``n_test``); the interval is the summary's bootstrap interval (``ci95``), or
    for a summary written before it the normal approximation to the binomial, so two bars
    whose intervals overlap widely are not told apart by the test items.
    """
    names = list(results)
    policies = list(dict.fromkeys(m for r in results.values() for m in r["accuracy"]))
    colors = policy_colors(policies)
    figure = go.Figure()
    for policy in policies:
        values, lows, highs = [], [], []
        for name in names:
            p, n = results[name]["accuracy"].get(policy), results[name]["n_test"]
            values.append(None if p is None else 100 * p)
            interval = results[name].get("ci95", {}).get(policy)
            low = high = 0.0
            if p is not None and interval is not None:
                low, high = 100 * (p - interval[0]), 100 * (interval[1] - p)
            elif p is not None and n:
                low = high = 196 * (p * (1 - p) / n) ** 0.5
            lows.append(low)
            highs.append(high)
        label = policy_label(policy)
        figure.add_trace(
            go.Bar(
                name=label,
                x=names,
                y=values,
                marker={"color": colors[policy], "pattern": {"shape": policy_pattern(policy)}},
                error_y={"type": "data", "array": highs, "arrayminus": lows, "thickness": 1},
                hovertemplate=f"{label}<br>%{{x}}: %{{y:.1f}}%<extra></extra>",
            )
        )
    figure.update_layout(barmode="group")
    figure.update_xaxes(title_text="dataset")
    figure.update_yaxes(title_text="held-out accuracy (%)", range=[0, 100])
    return finish(
        figure,
        "Held-out accuracy per multiple-choice dataset",
        subtitle="whiskers: 95% interval over the test items",
        legend="bottom",
    )
