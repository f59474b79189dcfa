"""The multiple-choice suite: COPA, NLI, MMLU, SST-2, Winogrande and Story Cloze.

Each dataset's items are split (:func:`fasb_lens.splits.holdout_split`) into training,
validation and held-out test items. Steering is learnt per dataset: the options of the
training items become labelled prompts (the correct option's text 1, each other option's
0), probes on every head pick the ``top_k`` anchored heads, and the same activations set
the vectors' scales. The policies' settings are calibrated on the validation items
(:func:`calibrate_dataset`, the shared search of :mod:`fasb_lens.evaluation.calibration`)
and every policy then scores the test items (:mod:`fasb_lens.evaluation.mc_items`), one
record per item and policy, so an interrupted run resumes. :func:`run_mc_datasets` runs
the suite into a run folder (:class:`~fasb_lens.evaluation.run.RunFolder`). Under
``torchrun`` each dataset is evaluated by a group of the processes: every one of them
learns its steering and calibration (one writes it), and they share its test items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens.anchoring import AnchoringSettings, collect_anchoring_activations, fit_anchoring
from fasb_lens.data.mc import (
    dataset,
    format_description,
    labelled_option_prompts,
    load_multiple_choice,
)
from fasb_lens.data.schema import MultipleChoiceItem
from fasb_lens.evaluation.calibration import (
    Calibration,
    Evaluator,
    build_searched,
    search_policies,
    searched_specs,
)
from fasb_lens.evaluation.config import DatasetsConfig
from fasb_lens.evaluation.mc_items import ItemScorer, predict, score_items
from fasb_lens.evaluation.policies import build_policy
from fasb_lens.evaluation.run import RunFolder, pending_chunks, upgrade_record
from fasb_lens.evaluation.search import Scores
from fasb_lens.evaluation.tables import Table, percent
from fasb_lens.policies import (
    Policy,
    PolicySettings,
    Unsteered,
    policy_spec,
    redraw,
)
from fasb_lens.profiling import section
from fasb_lens.scoring import AnswerScore
from fasb_lens.splits import Split, holdout_split
from fasb_lens.steering import Steering

logger = logging.getLogger(__name__)

KEYS = ("accuracy", "margin")
"""The validation objectives: accuracy, then the margin of the right option (tie-breaker)."""


# --- one dataset ----------------------------------------------------------------------------


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


def _scores(
    scorers: Sequence[ItemScorer], items: Sequence[MultipleChoiceItem], policy: Policy
) -> Scores:
    """Per item: 1 if the policy picks the right option, and the margin of the right
    option's log-probability over the best wrong one (the tie-breaker)."""
    correct, margins = [], []
    for (scores,), item in zip(score_items(scorers, [policy]), items, strict=True):
        wrong = max(s.log_prob for index, s in enumerate(scores) if index != item.label)
        correct.append(float(predict(scores) == item.label))
        margins.append(scores[item.label].log_prob - wrong)
    return {"accuracy": correct, "margin": margins}


def calibrate_dataset(
    model: TransformerBridge,
    items: Sequence[MultipleChoiceItem],
    steering: Steering,
    policies: Sequence[str],
    base: PolicySettings,
    *,
    seed: int = 0,
    progress: bool = True,
) -> Calibration:
    """The calibrated settings of the searched policies that ``policies`` use, chosen on
    ``items`` (a dataset's validation items) by accuracy, then margin: the thresholded
    policy's strength and threshold jointly (thresholds from the tracker's readings on
    the options), every other one's strength with as many evaluations. The unsteered
    model's means on the same items are the sweeps' reference line."""
    scorers = [ItemScorer(model, item, steering) for item in items]
    bar = tqdm(desc=f"calibrate {items[0].dataset}", unit="setting", disable=not progress)
    used = {policy_spec(name).calibrated_as for name in policies}
    specs = [spec for spec in searched_specs(("steering",)) if spec.name in used]

    def evaluator(spec: Any) -> Evaluator:
        make = build_searched(spec, base)

        def evaluate(settings: list[tuple[float, float | None]]) -> list[Scores]:
            bar.update(len(settings))
            return [_scores(scorers, items, make(alpha, t)) for alpha, t in settings]

        return evaluate

    readings = [value for scorer in scorers for value in scorer.readings()]
    chosen = (
        search_policies(
            "mc",
            {spec.name: evaluator(spec) for spec in specs},
            KEYS,
            rng=np.random.RandomState(seed),
            readings=readings,
        )
        if specs
        else None
    )
    unsteered = _scores(scorers, items, Unsteered())
    bar.close()
    return Calibration(
        tracker=base.tracker,
        top_k=steering.top_k,
        thresholds={} if chosen is None or chosen.threshold is None else {"mc": chosen.threshold},
        strengths={"mc": {} if chosen is None else chosen.strengths},
        judge=None,
        questions=len(items),
        uncertainty={"mc": {} if chosen is None else chosen.uncertainty},
        sweep=[]
        if chosen is None
        else [
            row for name, s in chosen.searches.items() for row in s.rows("mc", name, steering.top_k)
        ],
        unsteered={"mc": {key: float(np.mean(values)) for key, values in unsteered.items()}},
    )


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
        model, val, data.steering, policies, base, seed=seed, progress=progress
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
            calibration = _calibration(
                model, data, policies, base, seed=seed, folder=calibration_dir, progress=progress
            )
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
        name: [bool(_checked_done(records[(item.id, name)], item)["correct"]) for item in test]
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
        "accuracy": {name: sum(hits) / len(hits) for name, hits in correct.items()},
        "calibration": None if calibration is None else _calibration_summary(calibration),
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


def _calibration_summary(calibration: Calibration) -> dict[str, Any]:
    """What ``mc_datasets.json`` keeps of a dataset's calibration (not its sweep)."""
    return {
        **calibration.summary(),
        "items": calibration.questions,
        "unsteered": calibration.unsteered.get("mc", {}),
    }


# --- the suite ------------------------------------------------------------------------------


def _dataset_key(record: dict[str, Any]) -> tuple:
    return (record["dataset"], record["item_id"], record["policy"])


def run_mc_datasets(
    config: DatasetsConfig,
    data_dir: str | Path,
    out: str | Path,
    *,
    model: TransformerBridge | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Held-out accuracy of each policy on each multiple-choice dataset, resumable.

    Each dataset is read from its registered place in ``data_dir`` (Story Cloze, not
    shipped, from ``config.story_cloze``). Records go to ``out/mc_datasets.jsonl`` as they
    come; the summary to ``out/mc_datasets.json`` and ``out/mc_datasets.md``.
    """
    folder = RunFolder(out, config, load=DatasetsConfig.from_dict, command="mc-datasets")
    paths = {"story_cloze": config.story_cloze} if config.story_cloze else {}
    specs = [dataset(name) for name in config.datasets]
    for spec in specs:
        if spec.default_path is None and spec.name not in paths:
            raise ValueError(f"{spec.name} is not shipped: pass its file (--story-cloze)")
    model = model if model is not None else config.model.load()
    log = folder.log(storage.MC_DATASETS_LOG, _dataset_key, upgrade=upgrade_record)
    distributed.barrier()  # every process has read the log before any appends to it
    results = {}
    with distributed.split(len(specs)) as (group, groups):  # each dataset: a group of processes
        for index, spec in enumerate(specs):
            if index % groups != group:
                continue
            given = paths.get(spec.name)
            path = Path(given) if given is not None else Path(data_dir) / str(spec.default_path)
            items = load_multiple_choice(spec.name, path)
            done = {
                (r["item_id"], r["policy"]): r for r in log.values() if r["dataset"] == spec.name
            }
            with folder.phase(spec.name):
                results[spec.name] = evaluate_dataset(
                    model,
                    items,
                    policies=config.policies,
                    settings=config.settings(),
                    strengths=config.strengths,
                    top_k=config.top_k,
                    seed=config.seed,
                    limit=config.limit or None,
                    batch_size=config.batch_size,
                    calibrate=config.calibrate,
                    calibration_dir=folder.out / storage.MC_CALIBRATION_DIR,
                    progress=progress,
                    on_item=log.append,
                    done=done,
                )
    gathered = {name: r for part in distributed.gather_json(results) for name, r in part.items()}
    results = {spec.name: gathered[spec.name] for spec in specs}
    folder.finish()
    if distributed.is_main():
        storage.write_json(folder.out / storage.MC_DATASETS_SUMMARY, results)
        datasets_table(results, list(config.policies)).write(
            folder.out / storage.MC_DATASETS_TABLE, percent
        )
    return results


def datasets_table(results: dict[str, dict[str, Any]], policies: Iterable[str]) -> Table:
    """Each dataset's held-out accuracy per policy, and their average."""
    policies = list(policies)
    table = Table(["Dataset", "n test", *policies])
    for name, result in results.items():
        table.rows.append([name, str(result["n_test"]), *(result["accuracy"][p] for p in policies)])
    if results:
        means = [sum(r["accuracy"][p] for r in results.values()) / len(results) for p in policies]
        table.rows.append(["average", "", *means])
    return table
