"""Zero-shot multiple-choice evaluation on COPA, NLI, MMLU, SST-2, Winogrande and Story Cloze.

Each item is scored cloze-style: every option becomes a ``(prefix, continuation)`` pair
and the model's log-likelihood of the continuation (the option's own words, never a
letter) after the prefix is its score; the highest-scoring option is the prediction.
Steering is learnt per dataset: the options of the training items become labelled
prompts (the correct option's text 1, each other option's 0), probes on every head pick
the ``top_k`` anchored heads, and the same activations set the vectors' scales. The
held-out test items are then scored under each policy (no steering, ITI's fixed
steering, FASB), one record per item and policy, so an interrupted run can resume.
:func:`run_mc_datasets` runs the whole suite into a run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens.anchoring import collect_anchoring_activations, fit_anchoring
from fasb_lens.data.mc import (
    dataset,
    format_description,
    labelled_option_prompts,
    load_multiple_choice,
    option_prompts,
)
from fasb_lens.data.schema import MultipleChoiceItem
from fasb_lens.evaluation.search import START_GRIDS, Scores, Search, joint_search
from fasb_lens.models import load_model, tokenize
from fasb_lens.policies import Policy, Unsteered, adjusted, redraw
from fasb_lens.scoring import AnswerScore, PrefixScorer, ScoringJob, score_together
from fasb_lens.splits import Split
from fasb_lens.steering import Steering

logger = logging.getLogger(__name__)

# --- scoring ------------------------------------------------------------------------------


class _ItemScorer:
    """One :class:`PrefixScorer` per distinct prefix of an item; scores in option order.

    Built once per item, it scores the item under any number of policies while running
    each prefix only once.
    """

    def __init__(
        self, model: TransformerBridge, item: MultipleChoiceItem, steering: Steering | None
    ) -> None:
        pairs = option_prompts(item)
        self.continuations = [continuation for _, continuation in pairs]
        by_prefix: dict[str, list[int]] = {}
        for index, (prefix, _) in enumerate(pairs):
            by_prefix.setdefault(prefix, []).append(index)
        self.groups = [
            (PrefixScorer(model, prefix, steering=steering, steer_prompt_end=True), indices)
            for prefix, indices in by_prefix.items()
        ]

    def score(self, policy: Policy | None) -> list[AnswerScore]:
        return self.score_many([policy or Unsteered()])[0]

    def score_many(self, policies: Sequence[Policy]) -> list[list[AnswerScore]]:
        """Each policy's scores in option order, the policies' passes run together
        (:meth:`~fasb_lens.scoring.PrefixScorer.score_policies`)."""
        return _score_items([self], policies)[0]

    def jobs(self, policies: Sequence[Policy]) -> list[ScoringJob]:
        """One scoring job per prefix."""
        jobs = []
        for scorer, indices in self.groups:
            texts = [self.continuations[index] for index in indices]
            ids = tokenize(scorer.model, texts, prepend_bos=False)
            jobs.append(ScoringJob(scorer, ids, policies, texts))
        return jobs

    def in_option_order(
        self, results: Sequence[list[list[AnswerScore]]]
    ) -> list[list[AnswerScore]]:
        """The jobs' results (per prefix, per policy) as each policy's scores in option order."""
        scores: list[dict[int, AnswerScore]] = [{} for _ in results[0]]
        for (_, indices), per_policy in zip(self.groups, results, strict=True):
            for found, scored in zip(scores, per_policy, strict=True):
                found.update(zip(indices, scored, strict=True))
        return [[found[index] for index in range(len(self.continuations))] for found in scores]


def _score_items(
    scorers: Sequence[_ItemScorer], policies: Sequence[Policy]
) -> list[list[list[AnswerScore]]]:
    """Every item's scores under every policy (per item, per policy, in option order),
    the items' passes run together (:func:`~fasb_lens.scoring.score_together`)."""
    jobs = [scorer.jobs(policies) for scorer in scorers]
    results = score_together([job for item_jobs in jobs for job in item_jobs])
    scores, begin = [], 0
    for scorer, item_jobs in zip(scorers, jobs, strict=True):
        scores.append(scorer.in_option_order(results[begin : begin + len(item_jobs)]))
        begin += len(item_jobs)
    return scores


def score_item(
    model: TransformerBridge,
    item: MultipleChoiceItem,
    policy: Policy | None = None,
    steering: Steering | None = None,
) -> list[AnswerScore]:
    """The log-likelihood of each option's continuation under ``policy``, in option order.

    Options sharing a prefix are scored as one batch on one cached prefix; Winogrande's
    options have a prefix each.
    """
    return _ItemScorer(model, item, steering).score(policy)


def predict(scores: Sequence[AnswerScore]) -> int:
    """The index of the option with the highest summed log-probability (first on ties).

    The sum, not the per-token mean, is compared: it is the probability of the whole
    option, the measure TruthfulQA's MC scores use too, so every dataset and policy is
    judged alike. Length barely matters here: SST-2 and NLI options are single words,
    and Winogrande scores the same continuation for each option.
    """
    if not scores:
        raise ValueError("no scores to predict from")
    return max(range(len(scores)), key=lambda index: (scores[index].log_prob, -index))


# --- the evaluation -----------------------------------------------------------------------


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")


def _item_ids(items: Sequence[MultipleChoiceItem]) -> list[str]:
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    return ids


def split_items(
    items: Sequence[MultipleChoiceItem],
    *,
    seed: int,
    test_fraction: float = 0.5,
    val_fraction: float = 0.2,
) -> Split:
    """A seeded split of items: ``test_fraction`` held out, then ``val_fraction`` of the rest.

    Each side keeps the items' order. Every side must receive at least one item.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("val_fraction", val_fraction)
    ids = np.array(_item_ids(items), dtype=object)
    order = np.random.RandomState(seed).permutation(len(ids))
    n_test = round(len(ids) * test_fraction)
    n_val = round((len(ids) - n_test) * val_fraction)
    test, val, train = np.split(order, [n_test, n_test + n_val])
    if not (len(test) and len(val) and len(train)):
        raise ValueError(
            f"{len(ids)} items cannot be split into non-empty train, validation and test sides "
            f"at test_fraction={test_fraction}, val_fraction={val_fraction}"
        )
    return Split(
        train=tuple(ids[np.sort(train)]),
        val=tuple(ids[np.sort(val)]),
        test=tuple(ids[np.sort(test)]),
        protocol="mc_holdout",
        seed=seed,
    )


def _dataset_of(items: Sequence[MultipleChoiceItem]) -> str:
    if not items:
        raise ValueError("no items to evaluate")
    datasets = sorted({item.dataset for item in items})
    if len(datasets) > 1:
        raise ValueError(f"items mix several datasets {datasets}; evaluate one at a time")
    return datasets[0]


def _subset(
    items: Sequence[MultipleChoiceItem], limit: int | None, seed: int
) -> list[MultipleChoiceItem]:
    """A seeded random ``limit`` of the items, in their original order."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    chosen = np.random.RandomState(seed).choice(len(items), size=limit, replace=False)
    return [items[index] for index in sorted(chosen.tolist())]


def _fit_steering(
    model: TransformerBridge,
    items: Sequence[MultipleChoiceItem],
    split: Split,
    *,
    top_k: int,
    batch_size: int,
    progress: bool,
) -> tuple[Steering, float, float]:
    """Steering from the train and validation items, its best and majority val accuracy.

    The probing activations also serve as the "tuning" activations that set each vector's
    scale: these datasets have no second prompt set like TruthfulQA's tuning prompts.
    """
    known = set(split.train) | set(split.val)
    prompts = labelled_option_prompts([item for item in items if item.id in known])
    description = format_description(items[0].dataset)
    activations = collect_anchoring_activations(
        model, prompts, templates=(description, None), batch_size=batch_size, progress=progress
    )
    anchoring = fit_anchoring(activations, split, top_k=top_k, progress=progress)
    steering, probes = anchoring.steering, anchoring.probes
    return steering, float(probes.val_accuracy[steering.heads[0]]), probes.val_majority


def _record(item: MultipleChoiceItem, method: str, scores: Sequence[AnswerScore]) -> dict[str, Any]:
    prediction = predict(scores)
    return {
        "dataset": item.dataset,
        "item_id": item.id,
        "method": method,
        "prediction": prediction,
        "label": item.label,
        "correct": prediction == item.label,
        "log_probs": [score.log_prob for score in scores],
        "triggered": [score.triggered for score in scores],
    }


def _checked_done(record: Mapping[str, Any], item: MultipleChoiceItem) -> dict[str, Any]:
    if record.get("label") != item.label:
        raise ValueError(
            f"the finished record for item {item.id!r} has label {record.get('label')!r}, "
            f"but the item's label is {item.label}: is it from another run or dataset?"
        )
    return dict(record)


CALIBRATED = ("fasb", "fixed")
"""The families whose strengths (and, for FASB, threshold) are searched per dataset."""


def _scores(scorers: Sequence[_ItemScorer], items: Sequence[MultipleChoiceItem], policy: Policy):
    """Per item: 1 if the policy picks the right option, and the margin of the right
    option's log-probability over the best wrong one (the tie-breaker)."""
    correct, margins = [], []
    for (scores,), item in zip(_score_items(scorers, [policy]), items, strict=True):
        wrong = max(s.log_prob for index, s in enumerate(scores) if index != item.label)
        correct.append(float(predict(scores) == item.label))
        margins.append(scores[item.label].log_prob - wrong)
    return {"accuracy": correct, "margin": margins}


def calibrate_dataset(
    model: TransformerBridge,
    items: Sequence[MultipleChoiceItem],
    steering: Steering,
    templates: Mapping[str, Policy],
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Each family's strength, and the thresholded family's threshold, chosen on
    ``items`` (a dataset's validation items) by accuracy, then margin.

    ``templates`` maps a family (``"fasb"``, ``"fixed"``) to the policy whose settings are
    searched; FASB's strength and threshold are searched jointly (thresholds from the
    tracker's readings on the options), and every family gets as many evaluations
    (:func:`fasb_lens.evaluation.search.joint_search`). The unsteered model's mean
    accuracy and margin on the same items (``unsteered``) are the sweeps' reference line.
    """
    scorers = [_ItemScorer(model, item, steering) for item in items]
    bar = tqdm(desc=f"calibrate {items[0].dataset}", unit="setting", disable=not progress)

    def search(template: Policy) -> Search:
        def evaluate(alpha: float, threshold: float | None) -> Scores:
            bar.update(1)
            return _scores(scorers, items, adjusted(template, alpha=alpha, threshold=threshold))

        return Search(evaluate, ("accuracy", "margin"))

    readings = [
        value
        for scorer in scorers
        for group, indices in scorer.groups
        for values in group.readings(
            tokenize(model, [scorer.continuations[i] for i in indices], prepend_bos=False)
        )
        for value in values
    ]
    families = {name: templates[name] for name in CALIBRATED if name in templates}
    grids = START_GRIDS["mc"]
    rng = np.random.RandomState(seed)
    if "fasb" in families:
        others = {name: search(policy) for name, policy in families.items() if name != "fasb"}
        chosen = joint_search(search(families["fasb"]), readings, others, grids, rng=rng)
        strengths, threshold = chosen.strengths, chosen.threshold
        uncertainty, searches = chosen.uncertainty, chosen.searches
    else:
        searches = {name: search(policy) for name, policy in families.items()}
        strengths = {name: float(s.strengths(grids[name])) for name, s in searches.items()}
        uncertainty = {name: s.bootstrap(rng) for name, s in searches.items()}
        threshold = None
    unsteered = _scores(scorers, items, Unsteered())
    bar.close()
    return {
        "items": len(items),
        "unsteered": {key: float(np.mean(values)) for key, values in unsteered.items()},
        "strengths": strengths,
        "threshold": threshold,
        "uncertainty": uncertainty,
        "sweep": [
            row for name, s in searches.items() for row in s.rows("mc", name, steering.top_k)
        ],
    }


def calibrated(policy: Policy, calibration: Mapping[str, Any]) -> Policy:
    """``policy`` with its family's calibrated strength (and threshold, if it has one)."""
    strength = calibration["strengths"].get(policy.family)
    return adjusted(policy, alpha=strength, threshold=calibration["threshold"])


def evaluate_dataset(
    model: TransformerBridge,
    items: Sequence[MultipleChoiceItem],
    *,
    policies: Mapping[str, Policy],
    top_k: int = 24,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 32,
    calibrate: bool = True,
    calibration_dir: str | Path | None = None,
    progress: bool = True,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    done: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Accuracy of each policy on the held-out items of one dataset.

    Args:
        items: one dataset's items; ``limit`` keeps a seeded random subset of them.
        policies: name to policy, e.g. ``{"none": Unsteered(), "fasb": FASB(...)}``;
            the names label the records and the accuracies. Controls (random directions)
            draw new directions for every item.
        top_k: anchored heads for the steering, learnt on the train and val items.
        calibrate: choose the strengths and FASB's threshold on the validation items
            (:func:`calibrate_dataset`; kept as ``{dataset}.json`` in ``calibration_dir``
            so a resumed run does not redo it); ``False`` uses the policies as given.
        on_item: called with each new record ``{"dataset", "item_id", "method",
            "prediction", "label", "correct", "log_probs", "triggered"}``.
        done: records of an earlier, interrupted run keyed by ``(item_id, method)``; they
            are counted as they are and not scored again (nor passed to ``on_item``).
    """
    dataset = _dataset_of(items)
    if not policies:
        raise ValueError("no policies to evaluate; pass e.g. {'none': NoSteering()}")
    done = done or {}
    items = _subset(items, limit, seed)
    split = split_items(items, seed=seed)
    steering, best_val, majority = _fit_steering(
        model, items, split, top_k=top_k, batch_size=batch_size, progress=progress
    )
    logger.info("%s: anchored heads %s", dataset, ", ".join(map(str, steering.heads)))
    calibration = None
    if calibrate:
        saved = Path(calibration_dir) / f"{dataset}.json" if calibration_dir else None
        if saved is not None and saved.is_file():
            calibration = storage.read_json(saved, "a dataset's calibration")
        else:
            val = [item for item in items if item.id in set(split.val)]
            templates = {name: policies[name] for name in CALIBRATED if name in policies}
            calibration = calibrate_dataset(
                model, val, steering, templates, seed=seed, progress=progress
            )
            if saved is not None:
                storage.write_json(saved, calibration)
        policies = {name: calibrated(policy, calibration) for name, policy in policies.items()}
    test_ids = set(split.test)
    test_items = [item for item in items if item.id in test_ids]
    correct: dict[str, list[bool]] = {name: [] for name in policies}
    for item in tqdm(test_items, desc=dataset, unit="item", disable=not progress):
        pending = [name for name in policies if (item.id, name) not in done]
        scored: dict[str, list[AnswerScore]] = {}
        if pending:  # every policy again: an item's scores always come from the same forwards
            drawn = [redraw(policy, seed, name, item.id) for name, policy in policies.items()]
            scorer = _ItemScorer(model, item, steering)
            scored = dict(zip(policies, scorer.score_many(drawn), strict=True))
        for name in policies:
            if name in pending:
                record = _record(item, name, scored[name])
                if on_item is not None:
                    on_item(record)
            else:
                record = _checked_done(done[(item.id, name)], item)
            correct[name].append(bool(record["correct"]))
    return {
        "dataset": dataset,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "anchored_heads": [str(head) for head in steering.heads],
        "best_val_accuracy": best_val,
        "val_majority": majority,
        "accuracy": {name: sum(hits) / len(hits) for name, hits in correct.items()},
        "calibration": (
            None if calibration is None else {k: v for k, v in calibration.items() if k != "sweep"}
        ),
    }


def _dataset_key(record: dict[str, Any]) -> tuple:
    return (record["dataset"], record["item_id"], record["method"])


def run_mc_datasets(
    data_dir: str | Path,
    out: str | Path,
    *,
    datasets: Iterable[str],
    policies: dict[str, Policy],
    model: TransformerBridge | None = None,
    paths: Mapping[str, str | Path] | None = None,
    limit: int | None = 400,
    top_k: int = 24,
    seed: int = 0,
    calibrate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Held-out accuracy of each policy on each multiple-choice dataset, resumable.

    Each dataset is read from its registered place in ``data_dir`` unless ``paths``
    names its file (Story Cloze is not shipped and always needs one). Records go to
    ``out/mc_datasets.jsonl`` as they come; the summary to ``out/mc_datasets.json`` and
    ``out/mc_datasets.md``.
    """
    out = Path(out)
    specs = [dataset(name) for name in datasets]
    for spec in specs:
        if spec.default_path is None and spec.name not in (paths or {}):
            raise ValueError(f"{spec.name} is not shipped: pass its file (paths={{...}})")
    model = model if model is not None else load_model()
    log = storage.JsonlLog(out / storage.MC_DATASETS_LOG, _dataset_key)
    results = {}
    for spec in specs:
        name = spec.name
        given = (paths or {}).get(name)
        path = Path(given) if given is not None else Path(data_dir) / str(spec.default_path)
        items = load_multiple_choice(name, path)
        done = {(r["item_id"], r["method"]): r for r in log.values() if r["dataset"] == name}
        results[name] = evaluate_dataset(
            model,
            items,
            policies=policies,
            top_k=top_k,
            seed=seed,
            limit=limit,
            calibrate=calibrate,
            calibration_dir=out / "calibration",
            progress=progress,
            on_item=log.append,
            done=done,
        )
    storage.write_json(out / storage.MC_DATASETS_SUMMARY, results)
    storage.write_text(out / "mc_datasets.md", datasets_table(results, list(policies)))
    return results


def datasets_table(results: dict[str, dict[str, Any]], policies: list[str]) -> str:
    lines = [
        "| Dataset | n test | " + " | ".join(policies) + " |",
        "|" + "---|" * (len(policies) + 2),
    ]
    for name, result in results.items():
        cells = [f"{100 * result['accuracy'][p]:.1f}" for p in policies]
        lines.append(f"| {name} | {result['n_test']} | " + " | ".join(cells) + " |")
    if results:
        means = [
            f"{100 * sum(r['accuracy'][p] for r in results.values()) / len(results):.1f}"
            for p in policies
        ]
        lines.append("| average | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
