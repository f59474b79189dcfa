"""The multiple-choice suite: COPA, NLI, MMLU, SST-2, Winogrande and Story Cloze.

Each dataset is evaluated on its own (:func:`~fasb_lens.evaluation.mc_dataset.evaluate_dataset`):
steering learnt on its training and validation items, the policies' settings calibrated
on its validation items (:mod:`fasb_lens.evaluation.mc_calibration`, the shared search of
:mod:`fasb_lens.evaluation.calibration`), and every policy scored on its held-out test
items (:mod:`fasb_lens.evaluation.mc_items`), one record per item and policy, so an
interrupted run resumes. :func:`run_mc_datasets` runs the suite into a run folder
(:class:`~fasb_lens.evaluation.run.RunFolder`). Under ``torchrun`` each dataset is
evaluated by a group of the processes: every one of them learns its steering and
calibration (one writes it), and they share its test items.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens.data.mc import dataset, load_multiple_choice
from fasb_lens.evaluation.config import DatasetsConfig
from fasb_lens.evaluation.mc_dataset import evaluate_dataset
from fasb_lens.evaluation.run import RunFolder, upgrade_record
from fasb_lens.evaluation.tables import Table
from fasb_lens.evaluation.uncertainty import (
    accuracy_uncertainty,
    comparisons_table,
    with_interval,
)


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
                    max_kl=config.max_kl,
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
        write_tables(folder.out, results, config.policies)
    return results


def datasets_table(results: dict[str, dict[str, Any]], policies: Iterable[str]) -> Table:
    """Each dataset's held-out accuracy per policy, and their average (the mean of the
    datasets' accuracies)."""
    policies = list(policies)
    table = Table(["Dataset", "n test", *policies])
    for name, result in results.items():
        table.rows.append([name, str(result["n_test"]), *(result["accuracy"][p] for p in policies)])
    if results:
        means = [sum(r["accuracy"][p] for r in results.values()) / len(results) for p in policies]
        table.rows.append(["average", "", *means])
    return table


def average_uncertainty(
    results: dict[str, dict[str, Any]], policies: Iterable[str]
) -> dict[str, Any] | None:
    """The average row's intervals and comparisons: items resampled within their dataset,
    so each dataset weighs as much as in the average (``None`` when a summary predates
    per-item hits)."""
    if not results or any("correct" not in r for r in results.values()):
        return None
    strata = [name for name, r in results.items() for _ in r["test_ids"]]
    hits = {p: [float(h) for r in results.values() for h in r["correct"][p]] for p in policies}
    return accuracy_uncertainty(hits, strata=strata)


def write_tables(out: Path, results: dict[str, dict[str, Any]], policies: Iterable[str]) -> None:
    """``mc_datasets.md`` (accuracy with its 95% interval), ``mc_datasets.csv`` (the raw
    accuracies) and ``mc_datasets_comparisons.md`` / ``.csv`` (every paired comparison, per
    dataset and on the average)."""
    policies = list(policies)
    table = datasets_table(results, policies)
    uncertainty = {name: r for name, r in results.items() if "ci95" in r}
    average = average_uncertainty(results, policies)
    if average is not None:
        uncertainty["average"] = average
    shown = Table(table.head)
    for row in table.rows:
        ci95 = uncertainty.get(row[0], {}).get("ci95", {})
        shown.rows.append(
            [
                *row[:2],
                *(with_interval(v, ci95.get(p)) for p, v in zip(policies, row[2:], strict=True)),
            ]
        )
    storage.write_text(out / f"{storage.MC_DATASETS_TABLE}.md", shown.markdown() + _NOTE)
    storage.write_text(out / f"{storage.MC_DATASETS_TABLE}.csv", table.csv())
    found = [{**c, "dataset": name} for name, e in uncertainty.items() for c in e["comparisons"]]
    comparisons_table(found, lead=("dataset",)).write(out / storage.MC_DATASETS_COMPARISONS)


_NOTE = (
    "\nHeld-out accuracy, percent, with its 95% bootstrap interval over the test items "
    "(the average's resamples items within each dataset); paired comparisons in "
    "mc_datasets_comparisons.md.\n"
)
