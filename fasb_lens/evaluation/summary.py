"""The summary of a TruthfulQA run: per-method tables and files, from its records.

:func:`summarize_records` turns the records and judgements of a run into fold means of
MC1/MC2/MC3 and of each judge pair's True, Info and True*Info; :func:`write_summary`
writes ``results.json``, ``results.csv``, ``answers.csv`` and ``table.md`` (like the
paper's Table 1); :func:`write_fraction_sweep` the data-efficiency table.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fasb_lens import storage
from fasb_lens.evaluation.config import INFO_JUDGES, QUESTION_PROTOCOL, ExperimentConfig
from fasb_lens.evaluation.judges import Verdict, summarize


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _mean_of_present(values: list[float]) -> float:
    """The mean of the values that are numbers (a fold with no results gives NaN)."""
    return _mean([v for v in values if not (isinstance(v, float) and math.isnan(v))])


def logical_methods(config: ExperimentConfig, records: Iterable[dict[str, Any]]) -> list[str]:
    """The methods of a run as tables show them: controls once (their seeds pooled), and
    the leak-free protocol's ``NAME_question`` rows where the run has them."""
    present = {r["method"].split("/")[0] for r in records}
    names = list(config.methods)
    names += [f"{n}_question" for n in QUESTION_PROTOCOL if f"{n}_question" in present]
    return names


def _of(record: dict[str, Any], method: str) -> bool:
    return record["method"] == method or record["method"].startswith(method + "/")


def _trigger_rates(mc: list[dict[str, Any]]) -> dict[str, float]:
    """Share of true and of false MC2 answers that were steered (a trigger, or a
    decision made for the whole question)."""
    rows = [a for r in mc for a in r["answers"] if a["set"] == "mc2"]
    steered = [(a["label"], a["triggered"] or a["strength"] > 0) for a in rows]
    true = [hit for label, hit in steered if label == 1]
    false = [hit for label, hit in steered if label == 0]
    return {
        "steered_true": _mean([float(x) for x in true]),
        "steered_false": _mean([float(x) for x in false]),
    }


def summarize_records(
    config: ExperimentConfig,
    records: Iterable[dict[str, Any]],
    judgements: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    """Per method: MC metrics, the share of true and false answers steered, and each judge
    pair's True/Info/TruexInfo, per fold and mean; controls' seeds are pooled (and each
    seed's MC2 kept); the direction's share of each gain closes the summary."""
    records, judgements = list(records), list(judgements)
    folds = sorted({r["fold"] for r in records})
    verdicts: dict[tuple, list[Verdict]] = defaultdict(list)
    for j in judgements:
        verdict = Verdict(
            j["judge"], j["truthful"], j["informative"], j.get("score"), j.get("error")
        )
        verdicts[(j["method"].split("/")[0], j["fold"], j["judge"])].append(verdict)
    judged = config.judges if "generation" in config.tasks else ()
    truth_judges = [name for name in judged if name not in INFO_JUDGES]
    info_judges = [name for name in judged if name in INFO_JUDGES]
    summary: dict[str, Any] = {"folds": folds, "methods": {}}
    for method in logical_methods(config, records):
        entry: dict[str, Any] = {"per_fold": {}}
        for fold in folds:
            per: dict[str, Any] = {}
            mine = [r for r in records if _of(r, method) and r["fold"] == fold]
            mc = [r for r in mine if r["task"] == "mc"]
            for metric in ("mc1", "mc2", "mc3"):
                per[metric] = _mean([r[metric] for r in mc])
            per["n_mc"] = len({r["question_id"] for r in mc})
            per.update(_trigger_rates(mc))  # NaN for a fold without MC results yet
            gen = [
                r
                for r in records
                if _of(r, method) and (r["fold"], r["task"]) == (fold, "generation")
            ]
            per["n_generation"] = len({r["question_id"] for r in gen})
            per["triggered"] = _mean([float(r["triggered"]) for r in gen])
            for truth in truth_judges:
                for info in info_judges:
                    pair = summarize(
                        verdicts[(method, fold, truth)], verdicts[(method, fold, info)]
                    )
                    per[f"{truth} x {info}"] = pair
            entry["per_fold"][str(fold)] = per
        entry["mean"] = _fold_mean(entry["per_fold"])
        seeds = sorted(
            {r["method"].split("/")[1] for r in records if r["method"].startswith(method + "/")}
        )
        if seeds:
            entry["seeds"] = {
                seed: _mean(
                    [
                        r["mc2"]
                        for r in records
                        if r["method"] == f"{method}/{seed}" and r["task"] == "mc"
                    ]
                )
                for seed in seeds
            }
        summary["methods"][method] = entry
    summary["direction_share"] = direction_shares(summary)
    return summary


CONTROL_PAIRS = (
    ("fasb", "fasb_random"),
    ("fixed", "fixed_random"),
    ("fasb_question", "fasb_random_question"),
)
"""Each method and its random-direction control."""


def direction_shares(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """For each method with a control and each metric: the gain over ``none``, the
    control's gain, and the share of the gain the learnt direction explains,
    ``(gain - control's gain) / gain`` (``None`` when there is no gain)."""
    methods = summary["methods"]
    if "none" not in methods:
        return {}
    base = methods["none"]["mean"]
    shares: dict[str, dict[str, dict[str, float]]] = {}
    for real, control in CONTROL_PAIRS:
        if real not in methods or control not in methods:
            continue
        mean, other = methods[real]["mean"], methods[control]["mean"]
        rows = {}
        for key, value in mean.items():
            if isinstance(value, dict):
                metric, a, b, c = (
                    key + ": true_x_info",
                    value.get("true_x_info"),
                    other.get(key, {}).get("true_x_info"),
                    base.get(key, {}).get("true_x_info"),
                )
            elif key in ("mc1", "mc2", "mc3"):
                metric, a, b, c = key, value, other.get(key), base.get(key)
            else:
                continue
            if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b, c)):
                continue
            gain, control_gain = a - c, b - c
            rows[metric] = {
                "gain": gain,
                "control_gain": control_gain,
                "direction_share": (gain - control_gain) / gain if gain > 0 else None,
            }
        shares[real] = rows
    return shares


def _fold_mean(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean over folds of every number (judge pairs field by field; counts summed)."""
    mean: dict[str, Any] = {}
    folds = list(per_fold.values())
    if not folds:
        return mean
    for key, value in folds[0].items():
        if isinstance(value, dict):
            mean[key] = {
                field_: _mean_of_present([f[key][field_] for f in folds])
                if isinstance(value[field_], int | float)
                else value[field_]
                for field_ in value
            }
        elif key.startswith("n_"):
            mean[key] = sum(f[key] for f in folds)
        else:
            mean[key] = _mean_of_present([f[key] for f in folds])
    return mean


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a table like the paper's Table 1 (fold means, in percent)."""
    methods = summary["methods"]
    pairs = sorted(
        {k for m in methods.values() for k, v in m["mean"].items() if isinstance(v, dict)}
    )
    head = ["Method", "MC1", "MC2", "MC3", "MC steered (true / false)", "triggered"]
    for pair in pairs:
        head += [f"True ({pair})", "Info", "True*Info"]
    head.append("n (MC / gen.)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(value: float) -> str:
        return (
            "-"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else f"{100 * value:.1f}"
        )

    for name, entry in methods.items():
        mean = entry["mean"]
        row = [name] + [pct(mean.get(k, math.nan)) for k in ("mc1", "mc2", "mc3")]
        steered = [pct(mean.get(k, math.nan)) for k in ("steered_true", "steered_false")]
        row += [" / ".join(steered), pct(mean.get("triggered", math.nan))]
        for pair in pairs:
            values = mean.get(pair, {})
            row += [
                pct(values.get("true", math.nan)),
                pct(values.get("info", math.nan)),
                pct(values.get("true_x_info", math.nan)),
            ]
        row.append(f"{mean.get('n_mc', 0)} / {mean.get('n_generation', 0)}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


ANSWER_FIELDS = (
    "set",
    "answer",
    "label",
    "log_prob",
    "triggered",
    "trigger_token",
    "p_true",
    "strength",
)
"""The columns of ``answers.csv`` after fold, question and method."""


def write_csv(path: Path, head: list[str], rows: Iterable[list[Any]]) -> Path:
    """Write a CSV file atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(head)
    writer.writerows(rows)
    return storage.write_text(path, buffer.getvalue())


def write_summary(
    out: Path,
    config: ExperimentConfig,
    records: Iterable[dict[str, Any]],
    judgements: Iterable[dict[str, Any]],
    calibrations: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write results.json, results.csv, answers.csv and table.md; return the summary."""
    records = list(records)
    summary = summarize_records(config, records, judgements)
    summary["calibration"] = calibrations or {}
    storage.write_json(out / "results.json", summary)
    storage.write_text(out / "table.md", markdown_table(summary))
    results = []
    for method, entry in summary["methods"].items():
        for fold, values in [*entry["per_fold"].items(), ("mean", entry["mean"])]:
            for metric, value in values.items():
                if isinstance(value, dict):
                    for sub in ("true", "info", "true_x_info"):
                        results.append([method, fold, f"{metric}: {sub}", value.get(sub)])
                else:
                    results.append([method, fold, metric, value])
    write_csv(out / "results.csv", ["method", "fold", "metric", "value"], results)
    answers = [
        [record["fold"], record["question_id"], record["method"], *(row[k] for k in ANSWER_FIELDS)]
        for record in records
        if record["task"] == "mc"
        for row in record["answers"]
    ]
    write_csv(out / "answers.csv", ["fold", "question_id", "method", *ANSWER_FIELDS], answers)
    return summary


def write_fraction_sweep(out: Path, summaries: dict[float, dict[str, Any]]) -> str:
    """The data-efficiency sweep: ``train_fraction.csv`` and ``.md``; returns the table.

    One row per (fraction, method) with the fold means of MC1/MC2/MC3 and of True*Info
    for every judge pair of the runs.
    """
    pairs = sorted(
        {
            key
            for summary in summaries.values()
            for entry in summary["methods"].values()
            for key, value in entry["mean"].items()
            if isinstance(value, dict)
        }
    )
    head = ["train_fraction", "method", "mc1", "mc2", "mc3"] + [f"{p}: true_x_info" for p in pairs]
    rows = []
    for fraction, summary in summaries.items():
        for method, entry in summary["methods"].items():
            mean = entry["mean"]
            rows.append(
                [fraction, method]
                + [mean.get(k, math.nan) for k in ("mc1", "mc2", "mc3")]
                + [mean.get(p, {}).get("true_x_info", math.nan) for p in pairs]
            )
    write_csv(out / "train_fraction.csv", head, rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row[0]:g}", row[1]] + [f"{100 * v:.1f}" for v in row[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    storage.write_text(out / "train_fraction.md", table)
    return table
