"""Choosing the policies' settings on validation items, for both evaluation suites.

The paper's threshold (0.6), strength (60) and K (24 heads) were tuned for LLaMA2-7B-chat
and do not transfer as they are. A :class:`Calibration` holds what was chosen for one fold
(or one multiple-choice dataset) and everything it was chosen from; :func:`search_policies`
is the one strength search both suites run: every registered policy with a
:class:`~fasb_lens.policies.StrengthSearch` is searched on the task's validation
objective from its registration's start grid, the thresholded one jointly with its
threshold (or at a given threshold), and every other one with as many evaluations
(:func:`fasb_lens.evaluation.search.joint_search`). The protocols (which items, which
objective, how the threshold's readings are taken) are in
:mod:`fasb_lens.evaluation.truthfulqa_calibration` and :mod:`fasb_lens.evaluation.mc_suite`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fasb_lens import storage
from fasb_lens.evaluation.fluency import Cost
from fasb_lens.evaluation.run import upgrade_record
from fasb_lens.evaluation.search import (
    JointResult,
    Scores,
    Search,
    Setting,
    joint_search,
    threshold_key,
)
from fasb_lens.policies import Policy, PolicySettings, PolicySpec, policy_spec, searched
from fasb_lens.profiling import section

Evaluator = Callable[[list[Setting]], list[Scores]]
"""Scores of several settings of one policy (a strength and a threshold each), evaluated
together: one list of per-item values per objective."""


@dataclass
class Calibration:
    """The chosen settings of a fold (or a dataset) and everything they were chosen from.

    ``strengths[task][policy]`` is the calibrated strength of each searched policy for
    ``task`` (``"mc"``, ``"generation"``); ``thresholds[task]`` the thresholded policy's
    threshold; ``sweep`` every evaluated setting with its validation means;
    ``uncertainty[task][policy]`` the bootstrap of the choice; ``unsteered[task]`` the
    unsteered model's validation means (the sweeps' reference line).
    """

    tracker: str
    top_k: int
    thresholds: dict[str, float]
    strengths: dict[str, dict[str, float]]
    judge: str | None
    questions: int
    trackers: dict[str, dict[str, float]] = field(default_factory=dict)
    uncertainty: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    readings: dict[str, Any] = field(default_factory=dict)
    unsteered: dict[str, dict[str, float]] = field(default_factory=dict)
    fluency: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """``fluency[task][policy]``: the chosen strength's fluency cost (``kl``, nats per
    token, :mod:`fasb_lens.evaluation.fluency`) and the budget (``max_kl``); in
    generation also the validation Info rate at the chosen setting (``info``)."""
    evaluations: dict[str, dict[str, int]] = field(default_factory=dict)
    """``evaluations[task][policy]``: the settings each searched policy's choice cost (its
    search budget; the thresholded policy's includes the K search)."""
    push: dict[str, float] = field(default_factory=dict)
    """The chosen heads' push on the residual stream at strength 1, learnt and random
    (:func:`~fasb_lens.policies.controls.push_report`)."""

    def strength(self, task: str, policy: str) -> float | None:
        """The calibrated strength of a policy (its registration says whose it shares)."""
        source = policy_spec(policy).calibrated_as
        return None if source is None else self.strengths.get(task, {}).get(source)

    def threshold(self, task: str) -> float | None:
        return self.thresholds.get(task)

    def settings(self, task: str, policy: str, base: PolicySettings) -> PolicySettings:
        """``base`` with the calibrated strength and threshold of ``policy`` for ``task``."""
        strength, threshold = self.strength(task, policy), self.threshold(task)
        return replace(
            base,
            alpha=base.alpha if strength is None else strength,
            threshold=base.threshold if threshold is None else threshold,
            tracker=self.tracker,
        )

    def summary(self) -> dict[str, Any]:
        """The choices without the sweep and the readings (for ``results.json``)."""
        keep = (
            "tracker",
            "top_k",
            "thresholds",
            "strengths",
            "trackers",
            "uncertainty",
            "fluency",
            "evaluations",
            "push",
        )
        return {key: getattr(self, key) for key in keep}

    def save(self, path: str | Path) -> Path:
        """Write the calibration to ``path`` (a ``.json`` file, or a folder's
        ``calibration.json``)."""
        return storage.write_json(_file(path), asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration (a file, or a folder holding ``calibration.json``); the
        per-dataset files of earlier versions (flat ``strengths``, one ``threshold``)
        are read too."""
        path = _file(path)
        data = storage.read_json(path, "a calibration")
        if isinstance(data, dict) and ("items" in data or "threshold" in data):
            data = _from_dataset_format(data)
        if isinstance(data, dict):
            data["sweep"] = [upgrade_record(row) for row in data.get("sweep", [])]
        try:
            return cls(**data)
        except TypeError as error:
            raise storage.ArtifactError(f"{path}: not a calibration ({error})") from error


def _file(path: str | Path) -> Path:
    """A calibration's file: ``path`` itself when it names a ``.json`` file, else the
    ``calibration.json`` inside the folder ``path``."""
    path = Path(path)
    return path if path.suffix == ".json" else path / storage.CALIBRATION


def _from_dataset_format(data: dict[str, Any]) -> dict[str, Any]:
    """A multiple-choice dataset's calibration as earlier versions wrote it."""
    threshold = data.get("threshold")
    return {
        "tracker": "probe",
        "top_k": int(data.get("top_k", 0)),
        "thresholds": {} if threshold is None else {"mc": threshold},
        "strengths": {"mc": data.get("strengths", {})},
        "judge": None,
        "questions": int(data.get("items", 0)),
        "uncertainty": {"mc": data.get("uncertainty", {})},
        "sweep": data.get("sweep", []),
        "unsteered": {"mc": data.get("unsteered", {})},
    }


def searched_specs(available: Collection[str]) -> list[PolicySpec]:
    """The searched policies (thresholded first) whose artifacts are all ``available``."""
    return [spec for spec in searched() if set(spec.needs) <= set(available)]


def search_policies(
    task: str,
    evaluators: Mapping[str, Evaluator],
    keys: tuple[str, ...],
    *,
    rng: np.random.RandomState,
    readings: Sequence[float] | None = None,
    threshold: float | None = None,
    started: Search | None = None,
    costs: Mapping[str, Cost] | None = None,
    max_cost: float = math.inf,
) -> JointResult:
    """Every searched policy's strength (``evaluators``: one per policy name, searched
    first-to-last as :func:`searched_specs` orders them) on the objectives ``keys``.

    With ``readings`` (the tracker's readings at the checks) the thresholded policy's
    strength and threshold are searched jointly (``started``: its search so far, for
    instance the one that chose K, on the same items as its evaluator), then every other
    policy's strength with as many evaluations. Without, each policy is searched at
    ``threshold`` (the thresholded one; the others have none), and all are filled to the
    largest count. Each policy's evaluations are profiled as ``TASK search NAME``.
    ``costs`` (per policy name) and ``max_cost`` are the fluency budget each search
    keeps to (:mod:`fasb_lens.evaluation.fluency`).
    """
    evaluators = {
        name: _in_section(f"{task} search {name}", evaluate)
        for name, evaluate in evaluators.items()
    }
    costs = costs or {}
    searches = {
        name: Search(
            _single(evaluate),
            keys,
            evaluate_many=evaluate,
            cost=costs.get(name),
            max_cost=max_cost,
        )
        for name, evaluate in evaluators.items()
    }
    grids = {name: policy_spec(name).search.grids[task] for name in searches}  # type: ignore[union-attr]
    first = next(iter(searches))
    if started is not None:  # its settings tried so far, evaluated from now on like the others
        started.evaluate, started.evaluate_many = searches[first].evaluate, evaluators[first]
        started.cost, started.max_cost = searches[first].cost, max_cost
        searches[first] = started
    if policy_spec(first).search.threshold and readings is not None:  # type: ignore[union-attr]
        others = {name: search for name, search in searches.items() if name != first}
        shared = [name for name in others if policy_spec(name).search.threshold]  # type: ignore[union-attr]
        return joint_search(
            searches[first], readings, others, grids, family=first, shared_threshold=shared, rng=rng
        )
    for name, search in searches.items():
        thresholded = policy_spec(name).search.threshold  # type: ignore[union-attr]
        search.strengths(grids[name], threshold if thresholded else None)
    budget = max(len(search.tried) for search in searches.values())
    strengths, uncertainty = {}, {}
    for name, search in searches.items():
        at = threshold if policy_spec(name).search.threshold else None  # type: ignore[union-attr]
        search.fill(budget, at)
        strengths[name] = float(search.best(at))
        uncertainty[name] = search.bootstrap(rng)
    return JointResult(strengths, threshold, uncertainty, searches)  # type: ignore[arg-type]


def record_search(
    calibration: Calibration,
    task: str,
    chosen: JointResult,
    extra: tuple[str, ...] = (),
    earlier: int = 0,
) -> None:
    """Keep what ``task``'s search chose in ``calibration``: strengths, threshold and their
    bootstraps; each policy's number of evaluated settings (``earlier`` more for the
    thresholded one, evaluated before it, e.g. choosing K); each chosen strength's fluency
    cost and budget (and the validation means of ``extra`` objectives there)."""
    calibration.strengths[task] = chosen.strengths
    calibration.uncertainty[task] = chosen.uncertainty
    if chosen.threshold is not None:
        calibration.thresholds[task] = chosen.threshold
    first = next(iter(chosen.searches))
    calibration.evaluations[task] = {
        name: search.evaluations + (earlier if name == first else 0)
        for name, search in chosen.searches.items()
    }
    kept: dict[str, dict[str, float]] = {}
    for name, search in chosen.searches.items():
        if search.cost is None:
            continue
        alpha = chosen.strengths[name]
        at = chosen.threshold if policy_spec(name).search.threshold else None  # type: ignore[union-attr]
        scores = search.tried.get((round(alpha, 9), threshold_key(at)), {})
        kept[name] = {
            "kl": search.cost(alpha),
            "max_kl": search.max_cost,
            **{key: float(np.mean(scores[key])) for key in extra if key in scores},
        }
    calibration.fluency[task] = kept


def _in_section(name: str, evaluate: Evaluator) -> Evaluator:
    """``evaluate``, its calls profiled as the section ``name``."""

    def profiled(settings: list[Setting]) -> list[Scores]:
        with section(name):
            return evaluate(settings)

    return profiled


def _single(evaluate: Evaluator) -> Callable[[float, float | None], Scores]:
    return lambda alpha, threshold: evaluate([(alpha, threshold)])[0]


def build_searched(
    spec: PolicySpec, base: PolicySettings
) -> Callable[[float, float | None], Policy]:
    """How a search builds ``spec``'s policy at a strength and threshold from ``base``."""

    def make(alpha: float, threshold: float | None) -> Policy:
        chosen = base.threshold if threshold is None else threshold
        return spec.build(replace(base, alpha=alpha, threshold=chosen))

    return make


def next_k_edge(tried: Collection[int], best: int, most: int) -> int | None:
    """The next K to try when the best one sits on an edge of those tried: twice the
    largest (at most ``most``, every anchored head) or half the smallest (at least 1);
    ``None`` when the best is interior or the edge cannot move."""
    if best == max(tried) and best < most:
        return min(2 * best, most)
    if best == min(tried) and best > 1:
        return max(1, best // 2)
    return None
