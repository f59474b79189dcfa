"""Searching settings on validation data: strengths, thresholds, and how sure a choice is.

A strength search starts from a log-spaced grid, extends it (x2) while the best value sits
on an edge and beats its neighbour by at least one validation question's worth (a smaller
gain is a plateau, not a peak; or towards weaker steering while even the best
strength scores below no steering, and stronger when every strength scores exactly as no
steering does), then refines it
(x2^(+-1/2)) around the best, so the value it returns is an interior optimum, not the edge
of a grid. :func:`joint_search`
searches a FASB-like family's strength and threshold together (thresholds from quantiles
of the tracker's readings) and gives every other family the same number of evaluations
(more only where filling that budget left its best on an edge, :meth:`Search.fill`).
Each choice comes with a bootstrap over the validation items: how often it wins when they
are resampled, and the range of the winners. A search given a fluency cost
(:mod:`fasb_lens.evaluation.fluency`) never evaluates, extends to or chooses a strength
over its budget: a strength that breaks the model's language is not a setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_EXTENSIONS = 4
MAX_HALVINGS = 20
THRESHOLD_QUANTILES = (0.25, 0.5, 0.75)
BOOTSTRAP = 200

Scores = dict[str, list[float]]
"""Per metric, one value per validation question."""


def choose_threshold(
    first_check: Sequence[float], truthful: Sequence[bool], fallback: float
) -> tuple[float, float, list[dict[str, float]]]:
    """``(threshold, J, sweep)``: the threshold best separating untruthful answers.

    Candidates lie halfway between consecutive readings; ties go to the threshold that
    triggers least. With only one class of answers, ``fallback`` is returned.
    """
    pairs = sorted(zip(first_check, truthful, strict=True))
    n_bad = sum(not ok for _, ok in pairs)
    n_good = len(pairs) - n_bad
    values = [p for p, _ in pairs]
    middles = ((a + b) / 2 for a, b in zip(values[:-1], values[1:], strict=True))
    candidates = sorted({0.0, 1.0, fallback, *middles})
    sweep = []
    for beta in candidates:
        hits = [ok for p, ok in pairs if p < beta]
        tpr = sum(not ok for ok in hits) / n_bad if n_bad else float("nan")
        fpr = sum(hits) / n_good if n_good else float("nan")
        sweep.append(
            {
                "threshold": beta,
                "tpr": tpr,
                "fpr": fpr,
                "triggered": len(hits) / len(pairs),
                "j": tpr - fpr,
            }
        )
    if not n_bad or not n_good:
        return fallback, float("nan"), sweep
    best = max(sweep, key=lambda row: (round(row["j"], 12), -row["triggered"]))
    return best["threshold"], best["j"], sweep


def detection_auc(readings: Sequence[float], truthful: Sequence[bool]) -> float:
    """How often a truthful answer reads higher than an untruthful one (ties count half)."""
    good = [r for r, ok in zip(readings, truthful, strict=True) if ok]
    bad = [r for r, ok in zip(readings, truthful, strict=True) if not ok]
    if not good or not bad:
        return float("nan")
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def rank_key(scores: Scores, keys: Sequence[str]) -> tuple[float, ...]:
    return tuple(round(float(np.mean(scores[k])), 12) for k in keys)


Setting = tuple[float, float | None]
"""A strength and a threshold (``None``: the family has none)."""


@dataclass
class Search:
    """One family's search: every evaluated setting's per-question scores.

    ``evaluate_many``, when given, evaluates several settings at once (a grid, a pair of
    refinement points): a multiple-choice family then scores them in shared forwards.
    """

    evaluate: Callable[[float, float | None], Scores]
    keys: tuple[str, ...]
    tried: dict[Setting, Scores] = field(default_factory=dict)
    evaluate_many: Callable[[list[Setting]], list[Scores]] | None = None
    unsteered: float | None = None
    """The first objective at strength 0, once the search needed it (:meth:`_off_worse`)."""
    cost: Callable[[float], float] | None = None
    """The fluency cost of a strength; with :attr:`max_cost` its budget (none: no limit)."""
    max_cost: float = math.inf

    @property
    def evaluations(self) -> int:
        """The settings evaluated so far (no steering's reference included)."""
        return len(self.tried) + (self.unsteered is not None)

    def fluent(self, alpha: float) -> bool:
        """Whether ``alpha`` is within the fluency budget."""
        return self.cost is None or self.cost(alpha) <= self.max_cost

    def candidates(self) -> dict[Setting, Scores]:
        """The tried settings a choice may take: those within the fluency budget (the
        weakest strength tried if none is, as :meth:`best` falls back)."""
        fluent = {s: scores for s, scores in self.tried.items() if self.fluent(s[0])}
        if fluent or not self.tried:
            return fluent
        weakest = min(alpha for alpha, _ in self.tried)
        return {s: scores for s, scores in self.tried.items() if s[0] == weakest}

    def fluent_grid(self, grid: Sequence[float]) -> list[float]:
        """The grid's strengths within the budget; when none is, the largest of its
        smallest strength's halvings that is (a strength is then at least tried)."""
        kept = [alpha for alpha in grid if self.fluent(alpha)]
        if kept or not grid:
            return kept
        alpha = min(grid)
        for _ in range(MAX_HALVINGS):
            alpha /= 2
            if self.fluent(alpha):
                break
        return [alpha]

    def score(self, alpha: float, threshold: float | None = None) -> Scores:
        return self.score_all([(alpha, threshold)])[0]

    def score_all(self, settings: Sequence[Setting]) -> list[Scores]:
        """Each setting's scores; those not tried yet are evaluated together."""
        keys = [self._key(alpha, threshold) for alpha, threshold in settings]
        new = {
            key: setting
            for key, setting in zip(keys, settings, strict=True)
            if key not in self.tried
        }
        if new:
            todo = list(new.values())
            if self.evaluate_many is not None and len(todo) > 1:
                results = self.evaluate_many(todo)
            else:
                results = [self.evaluate(alpha, threshold) for alpha, threshold in todo]
            self.tried.update(zip(new, results, strict=True))
        return [self.tried[key] for key in keys]

    def _key(self, alpha: float, threshold: float | None) -> Setting:
        """A setting's key: a strength already tried within float error of ``alpha`` (a
        point reached by another product of steps, 4 as 2.378 x 2^(3/4)), so that it is
        not evaluated twice; otherwise ``alpha`` rounded."""
        key = threshold_key(threshold)
        for tried, at in self.tried:
            if at == key and math.isclose(tried, alpha, rel_tol=1e-6):
                return tried, key
        return round(alpha, 9), key

    def best(self, threshold: float | None = None) -> float:
        """The best strength tried at ``threshold`` within the fluency budget (ties: the
        smaller strength)."""
        return max(self._at(threshold), key=lambda a: (*self._rank(a, threshold), -a))

    def _at(self, threshold: float | None) -> list[float]:
        """The strengths tried at ``threshold`` within the fluency budget (the weakest
        tried if none is)."""
        key = threshold_key(threshold)
        tried = [alpha for alpha, at in self.tried if at == key]
        fluent = [alpha for alpha in tried if self.fluent(alpha)]
        return fluent or ([min(tried)] if tried else [])

    def _rank(self, alpha: float, threshold: float | None) -> tuple[float, ...]:
        """A tried setting's objectives, as the search ranks them."""
        return rank_key(self.tried[(alpha, threshold_key(threshold))], self.keys)

    def strengths(self, grid: Sequence[float], threshold: float | None = None) -> float:
        """Grid, extension (x2 or /2, :func:`beyond_edge`) while the best is on an edge,
        or off a grid that does no better than no steering (:meth:`_off_worse`), then
        refinement around the best."""
        self.score_all([(alpha, threshold) for alpha in self.fluent_grid(grid)])
        for _ in range(MAX_EXTENSIONS):
            tried = self._at(threshold)
            firsts = {self._rank(alpha, threshold)[0] for alpha in tried}
            if len(tried) == 1:
                step = tried[0] * 2
            else:
                step = self._edge(threshold) if len(firsts) > 1 else None
                if step is None:
                    step = self._off_worse(tried, threshold)
            if step is None or not self.fluent(step):
                break
            self.score(step, threshold)
        best = self.best(threshold)
        around = [best * factor for factor in (2**-0.5, 2**0.5)]
        self.score_all([(alpha, threshold) for alpha in around if self.fluent(alpha)])
        return self.best(threshold)

    def _off_worse(self, tried: Sequence[float], threshold: float | None) -> float | None:
        """Where to go when the best strength tried is no better than no steering on the
        first objective (whatever the tie-breakers say): weaker (/2) when it is worse
        (every strength tried breaks the model, even one interior to them), stronger (x2)
        when a flat grid equals it (none changes anything), nowhere otherwise. No steering
        (strength 0) is evaluated once, as a reference, and is not a candidate."""
        if self.unsteered is None:
            self.unsteered = rank_key(self.evaluate(0.0, threshold), self.keys)[0]
        best = self._rank(self.best(threshold), threshold)[0]
        flat = len({self._rank(alpha, threshold)[0] for alpha in tried}) == 1
        if best < self.unsteered:
            return min(tried) / 2
        if flat and best == self.unsteered:
            return max(tried) * 2
        return None

    def fill(self, budget: int, threshold: float | None = None) -> None:
        """More settings until ``budget`` are tried: a step beyond the best when it sits on
        an edge of the strengths tried (:func:`beyond_edge`), otherwise a pair of
        refinement points around it. A refinement can make the largest (or smallest)
        strength tried the best; then the search goes on past the budget, only beyond
        that edge, until the best is interior (at most :data:`MAX_EXTENSIONS` steps)."""
        step, extra = 1, 0
        while True:
            edge = self._edge(threshold)
            if len(self.tried) >= budget:
                if edge is None or extra == MAX_EXTENSIONS:
                    return
                extra += 1
            if edge is not None:
                self.score(edge, threshold)
                continue
            best = self.best(threshold)
            pair = [(best * 2 ** (sign * step / 4), threshold) for sign in (-1, 1)]
            pair = [setting for setting in pair if self.fluent(setting[0])]
            self.score_all(pair[: budget - len(self.tried)])
            step += 1

    @property
    def min_gain(self) -> float:
        """One validation question's worth of the first objective (``1 / n``): the least
        gain at a grid's edge that extends the grid. A smaller edge gain is a plateau, and
        climbing a plateau only finds strengths that change nothing or break the model."""
        scores = next(iter(self.tried.values()), None)
        return 1 / len(scores[self.keys[0]]) if scores else 0.0

    def _edge(self, threshold: float | None) -> float | None:
        """The next strength beyond the best when the best is on an edge, at least
        :attr:`min_gain` above its neighbour, and within the fluency budget (None if
        not)."""
        edge = beyond_edge(
            self._at(threshold),
            lambda alpha: self._rank(alpha, threshold),
            lambda alpha: alpha * 2,
            lambda alpha: alpha / 2,
            min_gain=self.min_gain,
        )
        return edge if edge is not None and self.fluent(edge) else None

    def bootstrap(self, rng: np.random.RandomState) -> dict[str, Any]:
        """How often the chosen setting wins when validation questions are resampled.

        Each resample ranks the settings as the choice does: by every objective in turn
        (ties of the first broken by the second), then the smaller strength.
        """
        settings = list(self.candidates())
        columns = {s: {k: np.asarray(self.tried[s][k]) for k in self.keys} for s in settings}

        def winner(rows: np.ndarray | slice) -> tuple[float, float | None]:
            def rank(s: tuple[float, float | None]) -> tuple[float, ...]:
                means = (round(float(columns[s][k][rows].mean()), 12) for k in self.keys)
                return (*means, -s[0])

            return max(settings, key=rank)

        chosen = winner(slice(None))
        n = len(next(iter(self.tried.values()))[self.keys[0]])
        winners = [winner(rng.randint(n, size=n)) for _ in range(BOOTSTRAP)]
        alphas = [w[0] for w in winners]
        thresholds = [w[1] for w in winners if w[1] is not None]
        result = {
            "chosen_wins": sum(w == chosen for w in winners) / len(winners),
            "alpha_range": [float(np.percentile(alphas, 5)), float(np.percentile(alphas, 95))],
        }
        if thresholds:
            result["threshold_range"] = [
                float(np.percentile(thresholds, 5)),
                float(np.percentile(thresholds, 95)),
            ]
        return result

    def rows(self, task: str, policy: str, top_k: int) -> list[dict[str, Any]]:
        """Every evaluated setting with its validation means (the sweep's rows)."""
        return [
            {
                "task": task,
                "policy": policy,
                "alpha": alpha,
                "threshold": threshold,
                "top_k": top_k,
                **{k: float(np.mean(v)) for k, v in scores.items()},
                **({} if self.cost is None else {"kl": self.cost(alpha)}),
            }
            for (alpha, threshold), scores in self.tried.items()
        ]


def beyond_edge(
    points: Sequence[float],
    value: Callable[[float], tuple[float, ...]],
    up: Callable[[float], float],
    down: Callable[[float], float],
    *,
    min_gain: float = 0.0,
) -> float | None:
    """The next point to try when the best of ``points`` (by ``value``, ties to the
    smaller point) is the largest or the smallest and beats its neighbour - strictly, or
    with ``min_gain`` by at least that much on the first objective: ``up(best)`` or
    ``down(best)``; ``None`` when the best is interior or its edge is flat or a plateau."""
    tried = sorted(points)
    if len(tried) < 2:
        return None
    best = max(tried, key=lambda point: (*value(point), -point))

    def wins_over(neighbour: float) -> bool:
        if min_gain > 0:
            return value(best)[0] - value(neighbour)[0] >= min_gain - 1e-12
        return value(best) > value(neighbour)

    if best == tried[-1] and wins_over(tried[-2]):
        return up(best)
    if best == tried[0] and wins_over(tried[1]):
        return down(best)
    return None


def edge_quantile(
    quantiles: Sequence[float], value: Callable[[float], tuple[float, ...]]
) -> float | None:
    """The next quantile of the readings to try as threshold (:func:`beyond_edge`):
    halfway to 1 above the highest, or to 0 below the lowest (thresholds live in [0, 1],
    so any strict gain extends: no plateau there leads anywhere unbounded)."""
    return beyond_edge(quantiles, value, lambda q: (q + 1) / 2, lambda q: q / 2)


def threshold_key(threshold: float | None) -> float | None:
    return None if threshold is None else round(threshold, 9)


@dataclass
class JointResult:
    """What :func:`joint_search` chose: each family's strength, the threshold of the
    thresholded family, each choice's bootstrap, and every search (for the sweeps)."""

    strengths: dict[str, float]
    threshold: float
    uncertainty: dict[str, dict[str, Any]]
    searches: dict[str, Search]


def joint_search(
    thresholded: Search,
    readings: Sequence[float],
    others: Mapping[str, Search],
    grids: Mapping[str, Sequence[float]],
    *,
    family: str = "fasb",
    shared_threshold: Collection[str] = (),
    rng: np.random.RandomState,
) -> JointResult:
    """A thresholded family's strength and threshold together, then every other family's
    strength with as many evaluations (those in ``shared_threshold`` at the threshold
    chosen, the others without one).

    ``thresholded`` (possibly holding earlier evaluations) is searched at the median of
    ``readings`` (the tracker at the checks), then at their :data:`THRESHOLD_QUANTILES`
    with that strength (extended towards 0 or 1 while an edge quantile wins), then again
    in strength at the best threshold; each search of
    ``others`` starts on ``grids[name]`` and is filled to the same count.
    """
    median = float(np.quantile(readings, 0.5))
    alpha = thresholded.strengths(grids[family], median)

    def at(quantile: float) -> tuple[float, ...]:
        scores = thresholded.score(alpha, float(np.quantile(readings, quantile)))
        return rank_key(scores, thresholded.keys)

    quantiles = list(THRESHOLD_QUANTILES)
    thresholded.score_all([(alpha, float(np.quantile(readings, q))) for q in quantiles])
    for _ in range(MAX_EXTENSIONS):
        edge = edge_quantile(quantiles, at)
        if edge is None:
            break
        quantiles.append(edge)
    ranked = thresholded.candidates()
    alpha, beta = max(ranked, key=lambda st: (*rank_key(ranked[st], thresholded.keys), -st[0]))
    alpha = thresholded.strengths([alpha], beta)
    strengths = {family: float(alpha)}
    uncertainty = {family: thresholded.bootstrap(rng)}
    for name, search in others.items():
        at = float(beta) if name in shared_threshold else None
        search.strengths(grids[name], at)
        search.fill(len(thresholded.tried), at)
        strengths[name] = float(search.best(at))
        uncertainty[name] = search.bootstrap(rng)
    return JointResult(
        strengths,
        float(beta),
        uncertainty,
        {family: thresholded, **others},  # type: ignore[arg-type]
    )
