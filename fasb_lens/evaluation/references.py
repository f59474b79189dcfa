"""What multiple choice gives without reading the question: chance and a content-blind scorer.

A multiple-choice number means little until it is set beside what needs no knowledge:

* **chance**: a uniformly random pick for MC1 (one over the number of candidates), uniform
  scores for MC2 (the share of true answers among the candidates), and a random ranking
  for MC3 (each true answer outscores every false one with probability one over the
  number of false answers plus one);
* **fewest words**: every answer scored by minus its number of words (probability
  proportional to ``e^-words``), so the shortest answer wins; TruthfulQA's true answers
  are often shorter ("Nothing happens") than its false ones.

Both are computed from the candidate answers a run's records hold, per question, so each
gets an interval like any policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fasb_lens.evaluation.statistics import interval
from fasb_lens.evaluation.uncertainty import (
    MC_METRICS,
    Key,
    clusters_of,
    question_key,
    strata_of,
)
from fasb_lens.multiple_choice import mc_metrics

REFERENCES = ("chance", "fewest words")


def _sets(record: dict[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    """A record's candidates per answer set: (true answers, best first; false answers)."""
    sets: dict[str, tuple[list[str], list[str]]] = {}
    for answer in record["answers"]:
        true, false = sets.setdefault(answer["set"], ([], []))
        (true if answer["label"] == 1 else false).append(answer["answer"])
    return sets


def _chance(sets: dict[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    (best, first_false), (true, false) = sets["mc1"], sets["mc2"]
    return {
        "mc1": 1 / (len(best[:1]) + len(first_false)),
        "mc2": len(true) / (len(true) + len(false)),
        "mc3": 1 / (len(false) + 1),
    }


def _fewest_words(sets: dict[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    def score(answers: Sequence[str]) -> list[float]:
        return [-float(len(answer.split())) for answer in answers]

    (best, first_false), (true, false) = sets["mc1"], sets["mc2"]
    mc1 = mc_metrics(score(best[:1]), score(first_false))["mc1"]
    rest = mc_metrics(score(true), score(false))
    return {"mc1": mc1, "mc2": rest["mc2"], "mc3": rest["mc3"]}


def reference_values(
    records: Iterable[dict[str, Any]],
) -> dict[str, dict[Key, dict[str, float]]]:
    """Per reference, per question ``(seed, fold, question_id)``, its MC1/MC2/MC3, from
    the candidates of the run's multiple-choice records (each question once per seed)."""
    questions: dict[Key, dict[str, tuple[list[str], list[str]]]] = {}
    for record in records:
        if record["task"] == "mc":
            questions.setdefault(question_key(record), _sets(record))
    usable = {key: sets for key, sets in questions.items() if {"mc1", "mc2"} <= set(sets)}
    return {
        "chance": {key: _chance(sets) for key, sets in usable.items()},
        "fewest words": {key: _fewest_words(sets) for key, sets in usable.items()},
    }


def summarize_references(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per reference: the fold mean of each metric and its 95% interval ((seed, fold) pairs
    as strata, a question's seed replicates resampled together)."""
    summary: dict[str, dict[str, Any]] = {}
    for name, per_question in reference_values(records).items():
        keys = sorted(per_question, key=str)
        strata = strata_of(keys)
        folds = sorted(set(strata), key=str)
        entry: dict[str, Any] = {"mean": {}, "ci95": {}, "n_mc": len(keys)}
        for metric in MC_METRICS:
            values = [per_question[key][metric] for key in keys]
            per_fold = [
                [
                    per_question[key][metric]
                    for key, at in zip(keys, strata, strict=True)
                    if at == fold
                ]
                for fold in folds
            ]
            entry["mean"][metric] = (
                sum(sum(f) / len(f) for f in per_fold) / len(per_fold) if per_fold else None
            )
            entry["ci95"][metric] = list(
                interval(values, strata=strata, clusters=clusters_of(keys))
            )
        summary[name] = entry
    return summary
