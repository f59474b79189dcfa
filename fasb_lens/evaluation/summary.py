"""The summary of a TruthfulQA run: per-policy tables and files, from its records.

:func:`summarize_records` turns the records and judgements of a run into fold means of
MC1/MC2/MC3 and of each judge pair's True, Info and True*Info; :func:`write_summary`
writes ``results.json``, ``results.csv``, the paired comparisons, ``answers.csv``,
``per_question.csv`` and ``table.md`` (like the paper's Table 1);
:func:`write_fraction_sweep` the data-efficiency table.

A run with several split seeds has a fold of each seed per stratum: its numbers are the
mean over every (seed, fold), each named ``SEED/FOLD`` in ``per_fold`` (a run with one
seed names its folds ``0``, ``1``, ... as before seeds), and ``seeds`` says which seeds
the run used.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fasb_lens import storage
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.judges import JUDGES, Verdict, judge_rates
from fasb_lens.evaluation.per_question import per_question_table
from fasb_lens.evaluation.references import summarize_references
from fasb_lens.evaluation.tables import Table, percent
from fasb_lens.evaluation.uncertainty import (
    MC_METRICS,
    PAIR_METRICS,
    QuestionValues,
    compared_pairs,
    comparisons,
    comparisons_table,
    policy_intervals,
    table_metrics,
    with_interval,
)
from fasb_lens.policies import POLICIES


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _mean_of_present(values: list[float]) -> float:
    """The mean of the values that are numbers (a fold with no results gives NaN)."""
    return _mean([v for v in values if not (isinstance(v, float) and math.isnan(v))])


def table_policies(config: ExperimentConfig, records: Iterable[dict[str, Any]]) -> list[str]:
    """The policies of a run as tables show them: controls once (their draws pooled), and
    the leak-free protocol's ``NAME_question`` rows where the run has them."""
    present = {r["policy"].split("/")[0] for r in records}
    names = list(config.policies)
    leak_free = [spec.name for spec in POLICIES if spec.leak_free]
    names += [f"{n}_question" for n in leak_free if f"{n}_question" in present]
    return names


def stratum_name(config: ExperimentConfig, seed: Any, fold: Any) -> str:
    """A (seed, fold)'s name in a summary: ``"1"`` in a run with one split seed,
    ``"42/1"`` in a run with several."""
    return f"{seed}/{fold}" if len(config.seeds) > 1 else str(fold)


def _stratum(record: dict[str, Any]) -> tuple[Any, Any]:
    return (record.get("seed"), record["fold"])


def _of(record: dict[str, Any], policy: str) -> bool:
    return record["policy"] == policy or record["policy"].startswith(policy + "/")


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
    """Per policy: MC metrics, the share of true and false answers steered, and each judge
    pair's True/Info/TruexInfo, per fold and mean; controls' draws are pooled (and each
    draw's MC2 kept); the direction's share of each gain closes the summary."""
    records, judgements = list(records), list(judgements)
    order = {seed: index for index, seed in enumerate(config.seeds)}  # the run's seeds first
    strata = sorted(
        {_stratum(r) for r in records},
        key=lambda pair: (order.get(pair[0], len(order)), str(pair[0]), pair[1]),
    )
    verdicts: dict[tuple, list[Verdict]] = defaultdict(list)
    for j in judgements:
        verdict = Verdict(
            j["judge"], j["truthful"], j["informative"], j.get("score"), j.get("error")
        )
        verdicts[(j["policy"].split("/")[0], _stratum(j), j["judge"])].append(verdict)
    judged = config.judges if "generation" in config.tasks else ()
    truth_judges = [name for name in judged if JUDGES.get(name).kind == "truth"]
    info_judges = [name for name in judged if JUDGES.get(name).kind == "info"]
    summary: dict[str, Any] = {
        "seeds": list(config.seeds),
        "folds": sorted({fold for _, fold in strata}),
        "policies": {},
    }
    for policy in table_policies(config, records):
        entry: dict[str, Any] = {"per_fold": {}}
        for stratum in strata:
            mine = [r for r in records if _of(r, policy) and _stratum(r) == stratum]
            per = _fold_entry(mine)
            for truth in truth_judges:
                for info in info_judges:
                    pair = judge_rates(
                        verdicts[(policy, stratum, truth)], verdicts[(policy, stratum, info)]
                    )
                    per[f"{truth} x {info}"] = pair
            entry["per_fold"][stratum_name(config, *stratum)] = per
        entry["mean"] = _fold_mean(entry["per_fold"])
        draws = sorted(
            {r["policy"].split("/")[1] for r in records if _of(r, policy) and "/" in r["policy"]}
        )
        if draws:
            entry["seeds"] = {
                draw: _mean(
                    [
                        r["mc2"]
                        for r in records
                        if r["policy"] == f"{policy}/{draw}" and r["task"] == "mc"
                    ]
                )
                for draw in draws
            }
        summary["policies"][policy] = entry
    names = list(summary["policies"])
    pairs = [f"{truth} x {info}" for truth in truth_judges for info in info_judges]
    data, metrics = QuestionValues.of_run(records, judgements), table_metrics(pairs)
    for policy, rows in policy_intervals(data, names, metrics).items():
        summary["policies"][policy]["ci95"] = rows
    found = comparisons(data, compared_pairs(names), metrics)
    summary["comparisons"] = [comparison.to_dict() for comparison in found]
    summary["direction_share"] = direction_shares(summary)
    summary["references"] = summarize_references(records)
    return summary


def _fold_entry(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's numbers on one fold (NaN where the fold has no results yet)."""
    mc = [r for r in records if r["task"] == "mc"]
    gen = [r for r in records if r["task"] == "generation"]
    per: dict[str, Any] = {metric: _mean([r[metric] for r in mc]) for metric in MC_METRICS}
    per["n_mc"] = len({r["question_id"] for r in mc})
    per.update(_trigger_rates(mc))
    per["n_generation"] = len({r["question_id"] for r in gen})
    per["triggered"] = _mean([float(r["triggered"]) for r in gen])
    return per


def control_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """Each of ``names`` with its random-direction control among them (the registrations
    say which; leak-free rows pair as their policies do)."""
    present = set(names)
    pairs = []
    for spec in POLICIES:
        if spec.control_of is None:
            continue
        pairs.append((spec.control_of, spec.name))
        if spec.leak_free:
            pairs.append((f"{spec.control_of}_question", f"{spec.name}_question"))
    return [(real, control) for real, control in pairs if {real, control} <= present]


def direction_shares(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """For each policy with a control and each metric: the gain over ``none``, the
    control's gain, and the share of the gain the learnt direction explains,
    ``(gain - control's gain) / gain`` - only where the gain itself is significant (its
    paired interval against ``none`` excludes zero; ``None`` otherwise)."""
    policies = summary["policies"]
    significant = {
        (c["a"], c["metric"])
        for c in summary.get("comparisons", ())
        if c["b"] == "none" and c["verdict"] != "no significant difference" and c["difference"] > 0
    }
    if "none" not in policies:
        return {}
    base = policies["none"]["mean"]
    shares: dict[str, dict[str, dict[str, float]]] = {}
    for real, control in control_pairs(policies):
        mean, other = policies[real]["mean"], policies[control]["mean"]
        rows = {}
        for key, value in mean.items():
            if isinstance(value, dict):
                metric, a, b, c = (
                    key + ": true_x_info",
                    value.get("true_x_info"),
                    other.get(key, {}).get("true_x_info"),
                    base.get(key, {}).get("true_x_info"),
                )
            elif key in MC_METRICS:
                metric, a, b, c = key, value, other.get(key), base.get(key)
            else:
                continue
            if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b, c)):
                continue
            gain, control_gain = a - c, b - c
            rows[metric] = {
                "gain": gain,
                "control_gain": control_gain,
                "direction_share": (gain - control_gain) / gain
                if (real, metric) in significant
                else None,
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


def _judge_pairs(summaries: Iterable[dict[str, Any]]) -> list[str]:
    """The judge pairs (``"truth x info"``) the summaries report, sorted."""
    return sorted(
        {
            key
            for summary in summaries
            for entry in summary["policies"].values()
            for key, value in entry["mean"].items()
            if isinstance(value, dict)
        }
    )


def results_table(summary: dict[str, Any]) -> Table:
    """The summary as a table like the paper's Table 1: fold means in percent, each with
    its 95% interval in brackets, and below the policies the multiple-choice references
    that need no knowledge (:mod:`~fasb_lens.evaluation.references`)."""
    pairs = _judge_pairs([summary])
    head = ["Policy", "MC1", "MC2", "MC3", "MC steered (true / false)", "triggered"]
    for pair in pairs:
        head += [f"True ({pair})", "Info", "True*Info"]
    table = Table([*head, "n (MC / gen.)", "searched (MC / gen.)"])
    for name, entry in summary["policies"].items():
        mean, ci95 = entry["mean"], entry.get("ci95", {})
        row = [name] + [with_interval(mean.get(k, math.nan), ci95.get(k)) for k in MC_METRICS]
        steered = [percent(mean.get(k, math.nan)) for k in ("steered_true", "steered_false")]
        row += [" / ".join(steered), mean.get("triggered", math.nan)]
        for pair in pairs:
            values = mean.get(pair, {})
            row += [
                with_interval(values.get(key, math.nan), ci95.get(f"{pair}: {key}"))
                for key in PAIR_METRICS
            ]
        row.append(f"{mean.get('n_mc', 0)} / {mean.get('n_generation', 0)}")
        row.append(searched(summary.get("calibration", {}), name))
        table.rows.append(row)
    for name, reference in summary.get("references", {}).items():
        cells = [with_interval(reference["mean"][k], reference["ci95"][k]) for k in MC_METRICS]
        blank = ["-"] * (len(head) - 1 - len(cells))
        table.rows.append([f"({name})", *cells, *blank, f"{reference['n_mc']} / -", "-"])
    return table


def searched(calibrations: dict[str, dict[str, Any]], policy: str) -> str:
    """How many settings the calibrations evaluated to choose ``policy``'s values, per task
    and summed over folds; a policy that takes another's values names it."""
    name = policy.partition("/")[0]
    if name not in POLICIES.names():  # the leak-free protocol's NAME_question
        name = name.removesuffix("_question")
    source = POLICIES.get(name).calibrated_as
    if source is None:
        return "-"
    if source != policy:
        return f"{source}'s"
    counts = [
        sum(c.get("evaluations", {}).get(task, {}).get(source, 0) for c in calibrations.values())
        for task in ("mc", "generation")
    ]
    return " / ".join(str(count) if count else "-" for count in counts)


def markdown_table(summary: dict[str, Any]) -> str:
    """:func:`results_table` in markdown, in percent, and below it the split seeds it
    pools."""
    return results_table(summary).markdown(percent) + seeds_line(summary)


def seeds_line(summary: dict[str, Any]) -> str:
    """The line under a table that says which split seeds its numbers pool (nothing for a
    summary written before runs named them)."""
    seeds = summary.get("seeds")
    if not seeds:
        return ""
    folds = len(summary.get("folds", ())) or "the"
    if len(seeds) == 1:
        return f"\nSplit seed {seeds[0]} ({folds} folds); n counts questions.\n"
    listed = ", ".join(map(str, seeds))
    return (
        f"\nSplit seeds {listed} ({folds} folds each), pooled: each number is the mean over "
        "every (seed, fold), its interval resamples questions with all their seeds; n counts "
        "questions once per seed.\n"
    )


ANSWER_COLUMNS = ("seed", "fold", "question_id", "policy")
"""The columns of ``answers.csv`` that say whose answer a row is."""
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
"""The columns of ``answers.csv`` after seed, fold, question and policy."""


def write_summary(
    out: Path,
    config: ExperimentConfig,
    records: Iterable[dict[str, Any]],
    judgements: Iterable[dict[str, Any]],
    calibrations: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write results.json, results.csv, comparisons, answers.csv, per_question.csv and
    table.md; return the summary."""
    records, judgements = list(records), list(judgements)
    summary = summarize_records(config, records, judgements)
    summary["calibration"] = calibrations or {}
    storage.write_json(out / storage.RESULTS, summary)
    storage.write_text(out / storage.RESULTS_TABLE, markdown_table(summary))
    comparisons_table(summary.get("comparisons", ())).write(out / storage.COMPARISONS_TABLE)
    results = Table(["policy", "fold", "metric", "value"])
    for policy, entry in summary["policies"].items():
        for fold, values in [*entry["per_fold"].items(), ("mean", entry["mean"])]:
            for metric, value in values.items():
                if isinstance(value, dict):
                    for sub in PAIR_METRICS:
                        results.rows.append([policy, fold, f"{metric}: {sub}", value.get(sub)])
                else:
                    results.rows.append([policy, fold, metric, value])
        for metric, (low, high) in entry.get("ci95", {}).items():
            results.rows.append([policy, "ci95_low", metric, low])
            results.rows.append([policy, "ci95_high", metric, high])
    storage.write_text(out / storage.RESULTS_CSV, results.csv())
    answers = Table([*ANSWER_COLUMNS, *ANSWER_FIELDS])
    answers.rows = [
        [record.get(k) for k in ANSWER_COLUMNS] + [row[k] for k in ANSWER_FIELDS]
        for record in records
        if record["task"] == "mc"
        for row in record["answers"]
    ]
    storage.write_text(out / storage.ANSWERS_CSV, answers.csv())
    storage.write_text(
        out / storage.PER_QUESTION_CSV, per_question_table(records, judgements).csv()
    )
    return summary


def write_fraction_sweep(out: Path, summaries: dict[float, dict[str, Any]]) -> str:
    """The data-efficiency sweep: ``train_fraction.csv`` and ``.md``; returns the table.

    One row per (fraction, policy) with the fold means of MC1/MC2/MC3 and of True*Info
    for every judge pair of the runs.
    """
    pairs = _judge_pairs(summaries.values())
    head = ["train_fraction", "policy", "mc1", "mc2", "mc3"] + [f"{p}: true_x_info" for p in pairs]
    table = Table(head)
    for fraction, summary in summaries.items():
        for policy, entry in summary["policies"].items():
            mean = entry["mean"]
            table.rows.append(
                [f"{fraction:g}", policy]
                + [mean.get(k, math.nan) for k in MC_METRICS]
                + [mean.get(p, {}).get("true_x_info", math.nan) for p in pairs]
            )
    return table.write(out / storage.TRAIN_FRACTION_TABLE, percent)
