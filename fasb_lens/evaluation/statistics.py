"""Intervals and paired tests: how sure a number is, and whether two policies differ.

Every number a run reports is a statistic of per-question values (a rate, a mean, or a
product of two rates such as True x Info). :func:`interval` resamples the questions with
replacement - within each stratum (a fold of a split seed), so each keeps its size - and
gives the 2.5th and 97.5th percentiles of the statistic: a 95% bootstrap interval. With
strata the statistic is computed in each and averaged over them, the fold mean a table
reports.

A run with several split seeds evaluates every question once per seed: replicates of one
question, not new questions. Passing each row's question as its *cluster* makes the
bootstrap resample questions with all their replicates together (a drawn question brings
its value under every seed), so replicates narrow an interval only as far as they differ,
never by counting one question as several; questions are drawn within the group of
questions that share their strata (the same fold under every seed, with the authors'
contiguous folds), so every stratum keeps its size.

:func:`compare` does the same for the *paired* difference of two policies on the same
questions (each resample draws a question for both), and adds a two-sided p-value from a
paired test: an exact McNemar test when the values are binary, the statistic is their mean
and no question has replicates (correct or not, truthful or not), else a paired
permutation test that swaps the two policies' values within randomly chosen questions
(with all their replicates). A difference is significant at 5% when its interval excludes
zero and the test agrees (p < 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
"""Bootstrap resamples (and permutations) per interval or test."""
LEVEL = 0.95

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps values ``[..., questions, components]`` (e.g. truthful and informative) to one
number per leading index ``[...]``, so that many resamples are computed at once."""


def mean_of(values: np.ndarray) -> np.ndarray:
    """The mean of the first component (a rate, MC1, MC2, ...)."""
    return values[..., 0].mean(axis=-1)


def product_of_means(values: np.ndarray) -> np.ndarray:
    """The product of the components' means: True x Info as the paper reports it."""
    return np.prod(values.mean(axis=-2), axis=-1)


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` on ``metric``: the difference, its 95% interval and a p-value."""

    a: str
    b: str
    metric: str
    difference: float
    ci95: tuple[float, float]
    p: float
    n: int
    test: str

    @property
    def significant(self) -> bool:
        """At 5%, by both measures: the interval excludes zero and the test's p < 0.05
        (the percentile interval and the test can disagree near the edge; then the
        difference is not claimed)."""
        low, high = self.ci95
        return (low > 0 or high < 0) and self.p < 1 - LEVEL

    def verdict(self) -> str:
        """The comparison in words: who is ahead where the interval says so, else "no
        significant difference"."""
        if not self.significant:
            return "no significant difference"
        return f"{self.a} {'above' if self.difference > 0 else 'below'} {self.b}"

    def to_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "difference": self.difference,
            "ci95": list(self.ci95),
            "p": self.p,
            "n": self.n,
            "test": self.test,
            "verdict": self.verdict(),
        }


def _as_values(values: Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def _labels(labels: Sequence[object] | None, n: int, what: str) -> list[object] | None:
    if labels is None:
        return None
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {what} for {n} questions")
    return labels


class _Layout:
    """Where rows lie and how they are resampled: rows ordered stratum by stratum
    (:attr:`order`, :attr:`spans`), and questions (clusters: by default each row its own)
    drawn with replacement within the groups of questions that lie in the same strata,
    each drawn question bringing its row in every one of them.

    With one row per question this is the plain stratified bootstrap: a group per stratum,
    drawn in the order the strata first appear.
    """

    def __init__(
        self, strata: Sequence[object] | None, clusters: Sequence[object] | None, n: int
    ) -> None:
        strata_of = _labels(strata, n, "strata") or [None] * n
        cluster_of = _labels(clusters, n, "clusters") or [("row", i) for i in range(n)]
        index: dict[object, int] = {}
        cells: dict[tuple[int, object], int] = {}
        where: dict[object, list[int]] = {}
        for row, (label, cluster) in enumerate(zip(strata_of, cluster_of, strict=True)):
            stratum = index.setdefault(label, len(index))
            if (stratum, cluster) in cells:
                raise ValueError(f"question {cluster!r} has two rows in stratum {label!r}")
            cells[(stratum, cluster)] = row
            where.setdefault(cluster, []).append(stratum)
        groups: dict[tuple[int, ...], list[object]] = {}
        for cluster, in_strata in where.items():
            groups.setdefault(tuple(sorted(in_strata)), []).append(cluster)
        # each group's rows in each of its strata, its questions in one order
        self.groups = [
            (len(members), {s: np.asarray([cells[(s, c)] for c in members]) for s in signature})
            for signature, members in groups.items()
        ]
        per_stratum = [[rows[s] for _, rows in self.groups if s in rows] for s in range(len(index))]
        self.order = np.concatenate([np.concatenate(parts) for parts in per_stratum])
        bounds = np.cumsum([0, *(sum(map(len, parts)) for parts in per_stratum)])
        self.spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
        self.n_clusters = len(where)
        self.replicated = self.n_clusters < n
        # each ordered row's question, numbered as the ordered rows first name them
        ordered = [cluster_of[row] for row in self.order.tolist()]
        number = {cluster: i for i, cluster in enumerate(dict.fromkeys(ordered))}
        self.clusters = np.asarray([number[cluster] for cluster in ordered], dtype=np.int64)

    def resamples(self, rng: np.random.Generator, resamples: int) -> np.ndarray:
        """``[resamples, n]`` row indices, each row a stratified draw of questions with
        replacement, laid out as :attr:`order` is."""
        parts: list[list[np.ndarray]] = [[] for _ in self.spans]
        for size, rows in self.groups:  # groups in order, so each stratum's parts are too
            draws = rng.integers(size, size=(resamples, size))
            for stratum, members in rows.items():
                parts[stratum].append(members[draws])
        return np.concatenate([np.concatenate(blocks, axis=1) for blocks in parts], axis=1)


def _by_stratum(statistic: Statistic, spans: list[tuple[int, int]]) -> Statistic:
    """``statistic`` computed in each stratum and averaged over strata (a fold mean, as
    tables report it), for values whose questions are ordered stratum by stratum."""
    if len(spans) == 1:
        return statistic

    def per_stratum(values: np.ndarray) -> np.ndarray:
        return np.mean([statistic(values[..., a:b, :]) for a, b in spans], axis=0)

    return per_stratum


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def interval(
    values: Sequence[Sequence[float]] | Sequence[float],
    statistic: Statistic = mean_of,
    *,
    strata: Sequence[object] | None = None,
    clusters: Sequence[object] | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> tuple[float, float]:
    """The 95% bootstrap interval of ``statistic`` over questions (``values``: one row
    per question, or per replicate of a question), resampled within ``strata`` and
    averaged over them; rows of the same ``clusters`` label (a question's replicates under
    several split seeds) are resampled together, as one question."""
    array = _as_values(values)
    if len(array) == 0:
        return (math.nan, math.nan)
    layout = _Layout(strata, clusters, len(array))
    rows = layout.resamples(np.random.default_rng(seed), resamples)
    return _percentiles(_by_stratum(statistic, layout.spans)(array[rows]))


def _binary(array: np.ndarray) -> bool:
    return bool(np.isin(array, (0.0, 1.0)).all())


def mcnemar(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sided exact McNemar p-value of paired binary outcomes ``a`` and ``b``: a
    binomial test on the questions where they disagree."""
    x, y = np.asarray(a), np.asarray(b)
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def permutation_p(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Statistic,
    *,
    clusters: np.ndarray | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> float:
    """A two-sided paired permutation p-value: how often swapping ``a`` and ``b`` within
    random questions gives a difference of statistics as large as the observed one. With
    ``clusters`` (each row's question, numbered from 0) a question's rows swap together."""
    observed = abs(float(statistic(a) - statistic(b)))
    count = len(a) if clusters is None else int(clusters.max()) + 1
    swap = np.random.default_rng(seed).random((resamples, count)) < 0.5
    swap = (swap if clusters is None else swap[:, clusters])[..., None]
    first, second = np.where(swap, b, a), np.where(swap, a, b)
    larger = int((np.abs(statistic(first) - statistic(second)) >= observed - 1e-12).sum())
    return (larger + 1) / (resamples + 1)


def compare(
    a: Sequence[Sequence[float]] | Sequence[float],
    b: Sequence[Sequence[float]] | Sequence[float],
    *,
    names: tuple[str, str],
    metric: str,
    statistic: Statistic = mean_of,
    strata: Sequence[object] | None = None,
    clusters: Sequence[object] | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Comparison:
    """``a`` against ``b`` on the same questions (row ``i`` of each is question ``i``, or
    a replicate of the question ``clusters[i]``): the difference of ``statistic``
    (averaged over ``strata``), its paired bootstrap interval (questions resampled with
    their replicates) and a paired test; ``n`` counts questions."""
    x, y = _as_values(a), _as_values(b)
    if x.shape != y.shape:
        raise ValueError(f"paired values must match: {x.shape} against {y.shape}")
    if len(x) == 0:
        return Comparison(*names, metric, math.nan, (math.nan, math.nan), math.nan, 0, "none")
    layout = _Layout(strata, clusters, len(x))
    rows = layout.resamples(np.random.default_rng(seed), resamples)
    stat = _by_stratum(statistic, layout.spans)
    draws = stat(x[rows]) - stat(y[rows])
    x, y = x[layout.order], y[layout.order]
    if statistic is mean_of and not layout.replicated and _binary(x[:, 0]) and _binary(y[:, 0]):
        p, test = mcnemar(x[:, 0], y[:, 0]), "exact McNemar"
    else:
        together = layout.clusters if layout.replicated else None
        p = permutation_p(x, y, stat, clusters=together, seed=seed, resamples=resamples)
        test = "paired permutation"
    difference = float(stat(x) - stat(y))
    return Comparison(*names, metric, difference, _percentiles(draws), p, layout.n_clusters, test)
