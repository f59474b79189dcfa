"""One multiple-choice dataset evaluated: a seeded subset of its items, split
(:func:`fasb_lens.splits.holdout_split`) into training, validation and held-out test
items, steering learnt on the first two, the policies calibrated on the validation items
(:mod:`fasb_lens.evaluation.mc_calibration`), and every policy scored on the test items
(:mod:`fasb_lens.evaluation.mc_items`), one record per item and policy.

Steering is learnt as for TruthfulQA, from other prompts: the options of the training
items become labelled prompts (the correct option's text 1, each other option's 0),
probes on every head pick the ``top_k`` anchored heads, and the same activations set the
vectors' scales. Under ``torchrun`` the processes of a dataset's group each learn its
steering and calibration, and share its test items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed
from fasb_lens.anchoring import AnchoringSettings, collect_anchoring_activations, fit_anchoring
from fasb_lens.data.mc import format_description, labelled_option_prompts
from fasb_lens.data.schema import MultipleChoiceItem
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.fluency import DEFAULT_MAX_KL
from fasb_lens.evaluation.mc_calibration import calibrate_dataset, calibration_summary
from fasb_lens.evaluation.mc_items import ItemScorer, predict
from fasb_lens.evaluation.policies import build_policy
from fasb_lens.evaluation.run import pending_chunks
from fasb_lens.evaluation.uncertainty import accuracy_uncertainty
from fasb_lens.policies import PolicySettings, redraw
from fasb_lens.profiling import section
from fasb_lens.scoring import AnswerScore
from fasb_lens.splits import Split, holdout_split
from fasb_lens.steering import Steering

logger = logging.getLogger(__name__)


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


def _record(item: MultipleChoiceItem, policy: str, scores: Sequence[AnswerScore]) -> dict[str, Any]:
    prediction = predict(scores)
    return {
        "dataset": item.dataset,
        "item_id": item.id,
        "policy": policy,
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


@dataclass
class _Dataset:
    """One dataset's items, split and steering, ready to evaluate."""

    name: str
    items: list[MultipleChoiceItem]
    split: Split
    steering: Steering
    best_val: float
    majority: float


def _prepare(
    model: TransformerBridge,
    items: Sequence[MultipleChoiceItem],
    *,
    top_k: int,
    seed: int,
    limit: int | None,
    batch_size: int,
    progress: bool,
) -> _Dataset:
    """A seeded subset of one dataset's items, its split and the steering learnt on it."""
    name = _dataset_of(items)
    chosen = _subset(items, limit, seed)
    split = holdout_split([item.id for item in chosen], seed=seed)
    steering, best_val, majority = _fit_steering(
        model, chosen, split, top_k=top_k, batch_size=batch_size, progress=progress
    )
    logger.info("%s: anchored heads %s", name, ", ".join(map(str, steering.heads)))
    return _Dataset(name, chosen, split, steering, best_val, majority)


def _calibration(
    model: TransformerBridge,
    data: _Dataset,
    policies: Sequence[str],
    base: PolicySettings,
    *,
    seed: int,
    max_kl: float,
    folder: str | Path | None,
    progress: bool,
) -> Calibration:
    """The dataset's calibration, read back from ``folder/{dataset}.json`` if a run
    already chose it (so a resumed run does not redo it), else chosen and kept there."""
    saved = Path(folder) / f"{data.name}.json" if folder is not None else None
    if saved is not None and saved.is_file():
        return Calibration.load(saved)
    val = [item for item in data.items if item.id in set(data.split.val)]
    calibration = calibrate_dataset(
        model, val, data.steering, policies, base, seed=seed, max_kl=max_kl, progress=progress
    )
    if saved is not None and distributed.is_main():  # one process of the dataset's group
        calibration.save(saved)
    return calibration


def evaluate_dataset(
    model: TransformerBridge,
    items: Sequence[MultipleChoiceItem],
    *,
    policies: Sequence[str],
    settings: PolicySettings | None = None,
    strengths: Sequence[str] = (),
    top_k: int = AnchoringSettings.top_k,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = AnchoringSettings.batch_size,
    calibrate: bool = True,
    max_kl: float = DEFAULT_MAX_KL,
    calibration_dir: str | Path | None = None,
    progress: bool = True,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    done: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Accuracy of each policy on the held-out items of one dataset.

    Args:
        items: one dataset's items; ``limit`` keeps a seeded random subset of them.
        policies: registered policy names; each is built from ``settings`` (and
            ``strengths``, ``NAME=VALUE``) by its registration. Controls (random
            directions) draw new directions for every item.
        top_k: anchored heads for the steering, learnt on the train and val items.
        calibrate: choose the strengths and the threshold on the validation items
            (:func:`calibrate_dataset`; kept as ``{dataset}.json`` in ``calibration_dir``
            so a resumed run does not redo it); ``False`` uses the settings as given.
        max_kl: the calibration's fluency budget, measured on validation items followed
            by their right option (:mod:`fasb_lens.evaluation.fluency`).
        on_item: called with each new record ``{"dataset", "item_id", "policy",
            "prediction", "label", "correct", "log_probs", "triggered"}``.
        done: records of an earlier, interrupted run keyed by ``(item_id, policy)``; they
            are counted as they are and not scored again (nor passed to ``on_item``).
    """
    if not policies:
        raise ValueError("no policies to evaluate; pass e.g. ['none', 'fasb']")
    base = settings or PolicySettings()
    with section("steering"):
        data = _prepare(
            model,
            items,
            top_k=top_k,
            seed=seed,
            limit=limit,
            batch_size=batch_size,
            progress=progress,
        )
    calibration = None
    if calibrate:
        with section("calibration"):
            kept = {"max_kl": max_kl, "folder": calibration_dir, "progress": progress}
            calibration = _calibration(model, data, policies, base, seed=seed, **kept)
    built = {
        name: build_policy(name, base, strengths=strengths, calibration=calibration)
        for name in policies
    }
    test = [item for item in data.items if item.id in set(data.split.test)]
    with section("test items"):
        records = _score_test_items(
            model, data, test, built, seed, dict(done or {}), on_item, progress
        )
    correct = {
        name: [int(_checked_done(records[(item.id, name)], item)["correct"]) for item in test]
        for name in built
    }
    return {
        "dataset": data.name,
        "n_train": len(data.split.train),
        "n_val": len(data.split.val),
        "n_test": len(data.split.test),
        "anchored_heads": [str(head) for head in data.steering.heads],
        "best_val_accuracy": data.best_val,
        "val_majority": data.majority,
        **_held_out(correct, test),
        "calibration": None if calibration is None else calibration_summary(calibration),
    }


def _held_out(correct: dict[str, list[int]], test: Sequence[MultipleChoiceItem]) -> dict:
    """Each policy's held-out accuracy with its interval and comparisons, and the per-item
    hits (in the order of ``test_ids``) they rest on."""
    return {
        "accuracy": {name: sum(hits) / len(hits) for name, hits in correct.items()},
        **accuracy_uncertainty(correct),
        "test_ids": [item.id for item in test],
        "correct": correct,
    }


def _score_test_items(model, data, test, built, seed, records, on_item, progress) -> dict:
    """Every test item's records under every policy (those in ``records`` kept as they
    are): an item with anything missing is scored again whole, every policy in the same
    forwards."""

    def missing(item: MultipleChoiceItem) -> set[str]:
        return {name for name in built if (item.id, name) not in records}

    todo = sum(bool(missing(item)) for item in test)
    bar = tqdm(total=len(test), initial=len(test) - todo, desc=data.name, unit="item")
    bar.disable = not progress
    new = []
    # with several processes on this dataset, each scores its share of the items
    for (item,), (wanted,) in distributed.share(pending_chunks(test, 1, missing)):
        drawn = [redraw(policy, seed, name, item.id) for name, policy in built.items()]
        scored = ItemScorer(model, item, data.steering).score_many(drawn)
        for name, scores in zip(built, scored, strict=True):
            if name in wanted:
                record = _record(item, name, scores)
                records[(item.id, name)] = record
                new.append(record)
                if on_item is not None:
                    on_item(record)
        bar.update(1)
    bar.close()
    if distributed.world_size() > 1:  # the others' records, to count every item
        for part in distributed.gather_json(new):
            records.update({(r["item_id"], r["policy"]): r for r in part})
    return records
