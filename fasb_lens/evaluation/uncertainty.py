"""How sure a run's numbers are: per-question values, intervals and paired comparisons.

A run's records hold one value per question for each policy and metric: MC1, MC2 and MC3
from multiple choice, and from generation each judge's verdict (truthful, informative).
:func:`policy_intervals` gives every table number its 95% bootstrap interval (questions
resampled within their fold, :mod:`~fasb_lens.evaluation.statistics`); :func:`comparisons`
gives the paired differences a table states - each policy against ``none``, against its
random-direction control, and against the policies its registration names
(``PolicySpec.compared_with``) - with their intervals and p-values. A random control's
several draws on one question count as one value, their mean.

A run with several split seeds (``--seeds``) evaluates each question once per seed. The
strata are then the (seed, fold) pairs - the number a table reports is the mean over them
- and the values pair by (seed, question); but a question evaluated under three seeds is
still one question: the bootstrap resamples questions (clusters) with all their seed
replicates together, and the permutation test swaps them together, so pooling seeds
narrows an interval only as far as the seeds' calibrations disagree, never by the square
root of the number of seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fasb_lens.evaluation.statistics import (
    Comparison,
    Statistic,
    compare,
    interval,
    mean_of,
    product_of_means,
)
from fasb_lens.evaluation.tables import Table
from fasb_lens.policies import POLICIES

MC_METRICS = ("mc1", "mc2", "mc3")
PAIR_METRICS = ("true", "info", "true_x_info")
"""A judge pair's metrics (``"TRUTH x INFO: true"``, ...)."""

Key = tuple[Any, Any, str]
"""A question of a run under one split seed: ``(seed, fold, question_id)`` (``seed`` is
``None`` for records that name none)."""


@dataclass(frozen=True)
class Metric:
    """A table metric as a function of per-question values: ``name`` as tables label it,
    the components each question contributes, and how they combine."""

    name: str
    statistic: Statistic


def question_key(record: dict[str, Any]) -> Key:
    """A record's (or judgement's) question under its split seed."""
    return (record.get("seed"), record["fold"], record["question_id"])


def strata_of(keys: Sequence[Key]) -> list[tuple[Any, Any]]:
    """Each key's stratum: its (seed, fold)."""
    return [(seed, fold) for seed, fold, _ in keys]


def clusters_of(keys: Sequence[Key]) -> list[str]:
    """Each key's question: its replicates under other seeds resample with it."""
    return [question for *_, question in keys]


def _base(policy: str) -> str:
    """A record's policy without its draw (``fasb_random/3`` -> ``fasb_random``)."""
    return policy.split("/")[0]


@dataclass
class QuestionValues:
    """Per policy, per question, the values the table's metrics are computed from."""

    mc: dict[str, dict[Key, dict[str, float]]]
    verdicts: dict[str, dict[str, dict[Key, tuple[float | None, float | None]]]]

    @classmethod
    def of_run(
        cls, records: Iterable[dict[str, Any]], judgements: Iterable[dict[str, Any]]
    ) -> QuestionValues:
        draws: dict[str, dict[Key, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
        for record in records:
            if record["task"] == "mc":
                key = question_key(record)
                draws[_base(record["policy"])][key].append({m: record[m] for m in MC_METRICS})
        mc = {
            policy: {
                key: {m: float(np.mean([v[m] for v in values])) for m in MC_METRICS}
                for key, values in questions.items()
            }
            for policy, questions in draws.items()
        }
        pooled: dict[str, dict[str, dict[Key, list[tuple[Any, Any]]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        for j in judgements:
            key = question_key(j)
            pooled[_base(j["policy"])][j["judge"]][key].append((j["truthful"], j["informative"]))
        verdicts = {
            policy: {
                judge: {key: _mean_verdict(values) for key, values in questions.items()}
                for judge, questions in judges.items()
            }
            for policy, judges in pooled.items()
        }
        return cls(mc, verdicts)

    def policies(self) -> set[str]:
        return set(self.mc) | set(self.verdicts)

    def values(self, policy: str, metric: str) -> dict[Key, list[float]]:
        """Each question's components of ``metric`` for ``policy`` (questions a judge
        could not judge are left out)."""
        if metric in MC_METRICS:
            return {key: [row[metric]] for key, row in self.mc.get(policy, {}).items()}
        pair, _, part = metric.partition(": ")
        truth, _, info = pair.partition(" x ")
        judged = self.verdicts.get(policy, {})
        truthful, informative = judged.get(truth, {}), judged.get(info, {})
        rows: dict[Key, list[float]] = {}
        for key in truthful.keys() & informative.keys():
            true, info_value = truthful[key][0], informative[key][1]
            parts = {"true": [true], "info": [info_value], "true_x_info": [true, info_value]}[part]
            if all(value is not None for value in parts):
                rows[key] = parts  # type: ignore[assignment]
        return rows


def _mean_verdict(values: list[tuple[Any, Any]]) -> tuple[float | None, float | None]:
    """Several draws' verdicts on one question as one: the mean of each flag judged."""

    def mean(flags: list[Any]) -> float | None:
        judged = [float(flag) for flag in flags if flag is not None]
        return sum(judged) / len(judged) if judged else None

    return mean([t for t, _ in values]), mean([i for _, i in values])


def statistic_of(metric: str) -> Statistic:
    """True x Info multiplies the two rates; every other metric is a mean."""
    return product_of_means if metric.endswith("true_x_info") else mean_of


def table_metrics(judge_pairs: Sequence[str]) -> list[str]:
    """The metrics a TruthfulQA table reports: MC1-3 and each judge pair's three."""
    return [*MC_METRICS, *(f"{pair}: {part}" for pair in judge_pairs for part in PAIR_METRICS)]


def _aligned(values: dict[Key, list[float]], keys: list[Key]) -> np.ndarray:
    return np.asarray([values[key] for key in keys], dtype=np.float64)


def policy_intervals(
    data: QuestionValues, policies: Iterable[str], metrics: Sequence[str], *, seed: int = 0
) -> dict[str, dict[str, list[float]]]:
    """Per policy and metric, the 95% interval of the pooled statistic ((seed, fold) pairs
    as strata, each question resampled with its seed replicates); metrics a policy has no
    values for are left out."""
    result: dict[str, dict[str, list[float]]] = {}
    for policy in policies:
        rows: dict[str, list[float]] = {}
        for metric in metrics:
            values = data.values(policy, metric)
            if not values:
                continue
            keys = sorted(values, key=str)
            low, high = interval(
                _aligned(values, keys),
                statistic_of(metric),
                strata=strata_of(keys),
                clusters=clusters_of(keys),
                seed=seed,
            )
            rows[metric] = [low, high]
        result[policy] = rows
    return result


def compared_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The comparisons a table of ``names`` states, each once: every policy against
    ``none``, each against its random-direction control, and each against the policies
    its registration names; leak-free rows (``NAME_question``) as their policies."""
    present = set(names)
    pairs: list[tuple[str, str]] = []

    def add(a: str, b: str) -> None:
        if a != b and {a, b} <= present and (a, b) not in pairs:
            pairs.append((a, b))

    for name in names:
        add(name, "none")
    for spec in POLICIES:
        for suffix in ("", "_question"):
            if spec.control_of is not None:
                add(spec.control_of + suffix, spec.name + suffix)
            for other in spec.compared_with:
                add(spec.name + suffix, other + suffix)
    return pairs


def comparisons(
    data: QuestionValues,
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    *,
    seed: int = 0,
) -> list[Comparison]:
    """Each pair's paired comparison on each metric, over the questions both have (paired
    by seed and question; a question's seed replicates resampled together)."""
    found = []
    for a, b in pairs:
        for metric in metrics:
            first, second = data.values(a, metric), data.values(b, metric)
            keys = sorted(first.keys() & second.keys(), key=str)
            if not keys:
                continue
            found.append(
                compare(
                    _aligned(first, keys),
                    _aligned(second, keys),
                    names=(a, b),
                    metric=metric,
                    statistic=statistic_of(metric),
                    strata=strata_of(keys),
                    clusters=clusters_of(keys),
                    seed=seed,
                )
            )
    return found


def accuracy_uncertainty(
    correct: dict[str, list[int]] | dict[str, list[float]], strata: list[object] | None = None
) -> dict[str, Any]:
    """Each policy's accuracy interval (``ci95``) and the paired comparisons a table
    states (each policy against ``none``, its random control and the policies its
    registration names: an exact McNemar test on the items), from per-item 0/1 hits in
    the same item order for every policy; ``strata`` (an item's dataset) makes the
    accuracy the mean of the strata's, as the suite's average row is."""
    return {
        "ci95": {name: list(interval(hits, strata=strata)) for name, hits in correct.items()},
        "comparisons": [
            compare(
                correct[a], correct[b], names=(a, b), metric="accuracy", strata=strata
            ).to_dict()
            for a, b in compared_pairs(list(correct))
        ],
    }


def comparisons_table(found: Iterable[dict[str, Any]], lead: Sequence[str] = ()) -> Table:
    """Paired comparisons (:meth:`Comparison.to_dict`) as a table: the difference in
    percentage points, its 95% interval, the test's p-value and the verdict, after the
    columns ``lead`` names (keys the dicts carry besides, such as ``dataset``)."""
    head = [*lead, "a", "b", "metric", "difference (pp)", "95% interval (pp)", "p", "test"]
    table = Table([*head, "verdict"])
    for c in found:
        low, high = c["ci95"]
        table.rows.append(
            [
                *(c[key] for key in lead),
                c["a"],
                c["b"],
                c["metric"],
                f"{100 * c['difference']:+.1f}",
                f"[{100 * low:+.1f}, {100 * high:+.1f}]",
                f"{c['p']:.3g}",
                c["test"],
                c["verdict"],
            ]
        )
    return table


def with_interval(value: float, ci95: Sequence[float] | None, digits: int = 1) -> str:
    """A fraction and its interval in percent: ``"51.1 [47.6, 54.5]"`` (``"-"``: none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.{digits}f}"
    if ci95 is None or any(math.isnan(bound) for bound in ci95):
        return text
    low, high = ci95
    return f"{text} [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"
