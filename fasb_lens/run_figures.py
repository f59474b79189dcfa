"""Every figure of a run directory, rendered with :mod:`fasb_lens.plotting`.

``render_run(run_dir, out)`` reads what :mod:`fasb_lens.evaluation.experiment` wrote
(probes and steering of each fold, the calibration readings and sweeps, the generation
records with their traces, ``results.json``) and saves one HTML (and PNG) file per
figure; it returns the files with a one-line caption each. A folder written by
``mc-datasets`` gets its accuracy and calibration figures (:func:`render_mc_datasets`), and
a folder of published results (``results/``, written by ``fasb-lens publish``) the figures
its files hold (:func:`render_published`): the policies compared, the direction shares,
the datasets' accuracies and calibrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fasb_lens import storage
from fasb_lens.activations import HeadActivations
from fasb_lens.anchoring import PROBING
from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.publish import PUBLISHED
from fasb_lens.evaluation.records import fold_folders, load_fold_artifacts, load_run, record_trace
from fasb_lens.evaluation.search import choose_threshold
from fasb_lens.plotting import (
    dataset_accuracies,
    dataset_sweeps,
    direction_share,
    head_heatmap,
    method_comparison,
    p_true_distributions,
    save_figure,
    steering_heads,
    sweep_lines,
    trajectories,
)
from fasb_lens.plotting.style import folds_text, metric_label, policy_label
from fasb_lens.policies import PolicySettings, searched


class _Saver:
    """Saves figures into one folder and keeps ``(file, caption)`` for each."""

    def __init__(self, out: Path, png: bool) -> None:
        self.out, self.png = out, png
        self.made: list[tuple[Path, str]] = []

    def __call__(self, figure: Any, name: str, caption: str) -> None:
        for path in save_figure(figure, self.out / name, png=self.png):
            self.made.append((path, caption))


def render_run(
    run_dir: str | Path, out: str | Path, *, png: bool = True, n_trajectories: int = 12
) -> list[tuple[Path, str]]:
    """Render every figure of a run into ``out``; returns ``(file, caption)`` pairs."""
    run_dir, out = Path(run_dir), Path(out)
    if _published(run_dir, "reproduce", storage.RESULTS).is_file() or (
        _published(run_dir, "mc-datasets", storage.MC_CALIBRATION_DIR).is_dir()
    ):
        return render_published(run_dir, out, png=png)
    if (run_dir / storage.MC_DATASETS_SUMMARY).is_file():
        return render_mc_datasets(run_dir, out, png=png)
    config, records, _ = load_run(run_dir)
    save = _Saver(out, png)
    first = config.seeds[0]  # the authors' split, unless the run chose others
    _heads(run_dir, first, save)
    calibrated = {
        (first if seed is None else seed, fold): Calibration.load(folder)
        for seed, fold, folder in fold_folders(run_dir)
        if (folder / storage.CALIBRATION).is_file()
    }
    # the calibration figures show the first seed's folds (labelled by fold)
    calibrations = [c for (seed, _), c in calibrated.items() if seed == first]
    if calibrations:
        _trackers(calibrations, save)
        _sweeps(calibrations, save)
        _thresholds(calibrations, save)
    results = run_dir / storage.RESULTS
    if results.is_file():
        _results(storage.read_json(results, "a run's summary"), save)
    thresholds = {
        where: c.thresholds.get("generation", config.threshold) for where, c in calibrated.items()
    }
    _trajectories(records, thresholds, config.threshold, n_trajectories, save)
    return save.made


def _heads(run_dir: Path, seed: int, save: _Saver) -> None:
    """Fold 0's probe accuracy per head (of the first split seed), and where the anchored
    heads sit."""
    probes, steering = load_fold_artifacts(run_dir, 0, seed)
    for sort, name in ((True, "heads_accuracy_sorted"), (False, "heads_accuracy")):
        figure = head_heatmap(
            probes.val_accuracy,
            anchored=steering.heads,
            sort_within_layer=sort,
            extra={"training accuracy": probes.train_accuracy},
            title="Validation accuracy of each head's truthfulness probe (fold 0)",
            subtitle=f"majority baseline {100 * probes.val_majority:.1f}%; the "
            f"{len(steering.heads)} anchored heads outlined",
        )
        save(
            figure,
            name,
            "validation accuracy of every head's truthfulness probe, "
            "anchored heads outlined" + (" (sorted within each layer)" if sort else ""),
        )
    probing = run_dir / storage.ACTIVATIONS_DIR / PROBING
    if (probing / storage.ACTIVATIONS_MANIFEST).is_file():
        figure = steering_heads(steering, HeadActivations.load(probing))
        figure.update_layout(title_text=f"{figure.layout.title.text} (fold 0)")
        save(
            figure,
            "anchored_heads",
            "where the anchored heads sit, and the projections of "
            "true and false answers on their steering directions",
        )


def _trackers(calibrations: list[Calibration], save: _Saver) -> None:
    """Each tracker's readings of the question alone and at the first check."""
    folds = folds_text(range(len(calibrations)))
    for tracker in calibrations[0].trackers:
        question = [p for c in calibrations for p in c.readings[tracker]["question"]]
        first = [p for c in calibrations for p in c.readings[tracker]["first_check"]]
        auc = ", ".join(f"{c.trackers[tracker]['auc']:.2f}" for c in calibrations)
        used = [i for i, c in enumerate(calibrations) if c.tracker == tracker]
        status = f"the tracker used in {folds_text(used)}" if used else "not the tracker used"
        save(
            p_true_distributions(
                question,
                first,
                threshold=calibrations[0].trackers[tracker]["threshold"],
                labels=(
                    "question only (prompt's last token)",
                    "at the first check during generation",
                ),
                title=f"Tracker '{tracker}': p_true from the question alone vs at the first check",
                subtitle=f"validation questions of {folds}; detection AUC per fold {auc}; "
                f"{status}; threshold: fold 0's best for this tracker",
            ),
            f"p_true_distributions_{tracker}",
            f"the {tracker} tracker's p_true from the question alone vs at the first "
            f"check of unsteered answers (validation questions; AUC per fold {auc})",
        )


def _sweeps(calibrations: list[Calibration], save: _Saver) -> None:
    """Validation objectives against strength, one panel per fold, and against K."""
    thresholded = searched()[0].name  # the policy whose threshold and K are searched
    sweep = [dict(row, fold=i) for i, c in enumerate(calibrations) for row in c.sweep]
    titles = {
        i: f"fold {i} (K = {c.top_k}, tracker {c.tracker})" for i, c in enumerate(calibrations)
    }
    for task, metric in (("mc", "mc2"), ("mc", "mc1"), ("generation", "true_x_info")):
        rows = [
            row
            for row in sweep
            if row["task"] == task and _on_final_curve(row, calibrations[row["fold"]])
        ]
        if not rows:
            continue
        chosen = {
            (i, policy): alpha
            for i, c in enumerate(calibrations)
            for policy, alpha in c.strengths.get(task, {}).items()
        }
        unsteered = {
            i: c.unsteered[task][metric]
            for i, c in enumerate(calibrations)
            if metric in c.unsteered.get(task, {})
        }
        save(
            sweep_lines(
                rows,
                x="alpha",
                y=metric,
                facet="fold",
                facet_titles=titles,
                chosen=chosen,
                unsteered=unsteered or None,
                title=f"Validation {metric_label(metric, percent=False)} ({_TASKS[task]}) "
                "against strength",
            ),
            f"sweep_alpha_{task}_{metric}",
            f"validation {metric} ({task}) for each strength, per policy and fold, the "
            "calibrated strength starred",
        )
    by_k = [
        row
        for row in sweep
        if row["task"] == "mc" and row["policy"] == thresholded and _k_selection(row, sweep)
    ]
    if len({row["top_k"] for row in by_k}) > 1:
        chosen = {}
        for i, c in enumerate(calibrations):
            curve = [row for row in by_k if row["fold"] == i and row["top_k"] == c.top_k]
            if curve:
                chosen[(i, c.top_k)] = max(curve, key=lambda row: (row["mc2"], -row["alpha"]))[
                    "alpha"
                ]
        ks = sorted({row["top_k"] for row in by_k})
        save(
            sweep_lines(
                sorted(by_k, key=lambda row: ks.index(row["top_k"])),
                x="alpha",
                y="mc2",
                group="top_k",
                facet="fold",
                facet_titles={
                    i: f"fold {i}: K = {c.top_k} chosen" for i, c in enumerate(calibrations)
                },
                labels={k: f"K = {k}" for k in ks},
                chosen=chosen,
                title=f"Validation MC2 of {policy_label(thresholded)} for each number of "
                "anchored heads K",
                subtitle="at the threshold K was compared at; star: the chosen K's best strength",
            ),
            "sweep_top_k",
            f"validation MC2 against {thresholded}'s strength for each candidate K, at the "
            "threshold K was compared at",
        )


_TASKS = {"mc": "multiple choice", "generation": "generation"}


def _thresholds(calibrations: list[Calibration], save: _Saver) -> None:
    """How the generation threshold trades detection against false triggers."""
    rows, chosen = [], {}
    for i, c in enumerate(calibrations):
        checks, truthful = c.readings[c.tracker]["first_check"], c.readings["truthful"]
        _, _, sweep = choose_threshold(checks, truthful, PolicySettings().threshold)
        at = c.thresholds.get("generation")
        if at is not None and not any(row["threshold"] == at for row in sweep):
            sweep.append(_threshold_row(checks, truthful, at))
        for key in ("tpr", "fpr", "triggered"):
            rows += [dict(row, fold=i, curve=key, value=row[key]) for row in sweep]
            if at is not None:
                chosen[(i, key)] = at
    save(
        sweep_lines(
            rows,
            x="threshold",
            y="value",
            group="curve",
            facet="fold",
            facet_titles={
                i: f"fold {i} (tracker {c.tracker}, {len(c.readings['truthful'])} answers)"
                for i, c in enumerate(calibrations)
            },
            labels={key: metric_label(key, percent=False) for key in ("tpr", "fpr", "triggered")},
            chosen=chosen,
            log_x=False,
            percent=True,
            steps=True,
            title="Generation threshold: untruthful answers caught vs truthful ones steered",
            subtitle="readings at the first check of unsteered validation answers; "
            "star: the calibrated threshold",
        ).update_yaxes(title_text="share of answers (%)", col=1),
        "sweep_threshold",
        "how the generation threshold trades detection of untruthful answers "
        "(TPR) against steering truthful ones (FPR)",
    )


def _threshold_row(checks: list[float], truthful: list[bool], at: float) -> dict[str, float]:
    """The detection rates of one threshold (as :func:`choose_threshold` counts them)."""
    hits = [ok for p, ok in zip(checks, truthful, strict=True) if p < at]
    n_bad = sum(not ok for ok in truthful)
    n_good = len(truthful) - n_bad
    return {
        "threshold": at,
        "tpr": sum(not ok for ok in hits) / n_bad if n_bad else float("nan"),
        "fpr": sum(hits) / n_good if n_good else float("nan"),
        "triggered": len(hits) / len(truthful) if truthful else float("nan"),
    }


def _results(summary: dict[str, Any], save: _Saver) -> None:
    """The policies side by side, and each one's gain next to its control's."""
    save(
        method_comparison(summary),
        "methods",
        "MC1/MC2/MC3 and True/Info/True*Info per policy (fold means; whiskers the 95% interval)",
    )
    if summary.get("direction_share"):
        save(
            direction_share(summary),
            "direction_share",
            "each policy's gain over no steering next to its random-direction control's",
        )


def _trajectories(
    records: list[dict], thresholds: dict[tuple, float], default: float, n: int, save: _Saver
) -> None:
    """p_true token by token where the thresholded policy triggered, beside the run
    without steering, each with its fold's threshold (``thresholds`` by (seed, fold);
    ``default`` where none was calibrated)."""
    thresholded = searched()[0].name
    triggered = [
        r
        for r in records
        if r["task"] == "generation" and r["policy"] == thresholded and r["triggered"]
    ][:n]
    plain = {
        (r["seed"], r["fold"], r["question_id"]): r
        for r in records
        if r["task"] == "generation" and r["policy"] == "none"
    }
    if not triggered:
        return
    pairs = [(r, plain.get((r["seed"], r["fold"], r["question_id"]))) for r in triggered]
    figure = trajectories(
        [record_trace(r) for r, _ in pairs],
        unsteered=[record_trace(p if p else r) for r, p in pairs],
        labels=[f"{r['question_id']}: {r['answer'][:50]}" for r, _ in pairs],
        titles=[
            f"{policy_label(thresholded)}, fold {r['fold']}, {r['question_id']}: "
            f"p_true token by token"
            for r, _ in pairs
        ],
        threshold=[thresholds.get((r["seed"], r["fold"]), default) for r, _ in pairs],
    )
    save(
        figure,
        "trajectories",
        f"p_true token by token for answers where {thresholded} "
        "triggered, with what backtracking threw away and the unsteered run",
    )


def render_mc_datasets(
    run_dir: str | Path,
    out: str | Path,
    *,
    png: bool = True,
    summary: str = storage.MC_DATASETS_SUMMARY,
    calibration: str = storage.MC_CALIBRATION_DIR,
) -> list[tuple[Path, str]]:
    """The accuracy and calibration figures of an ``mc-datasets`` run folder (``summary``
    and ``calibration``: the names of its summary and its calibration folder)."""
    results = storage.read_json(Path(run_dir) / summary, "an mc-datasets summary")
    caption = "held-out accuracy per dataset and policy, with 95% intervals"
    made = [
        (path, caption)
        for path in save_figure(dataset_accuracies(results), Path(out) / "mc_datasets", png=png)
    ]
    folder = Path(run_dir) / calibration
    calibrations = {
        name: Calibration.load(folder / f"{name}.json")
        for name in results
        if (folder / f"{name}.json").is_file()
    }
    if calibrations:
        caption = "validation accuracy against strength per dataset, the unsteered model dashed"
        paths = save_figure(dataset_sweeps(calibrations), Path(out) / "mc_datasets_sweeps", png=png)
        made += [(path, caption) for path in paths]
    return made


def _published(folder: Path, command: str, name: str) -> Path:
    """Where ``fasb-lens publish`` puts a run's file ``name`` in ``folder``."""
    return folder / dict(PUBLISHED[command])[name]


def render_published(
    folder: str | Path, out: str | Path, *, png: bool = True
) -> list[tuple[Path, str]]:
    """The figures a folder of published results (``results/``) can draw: the policies
    compared and the direction shares of a ``reproduce`` run, the accuracies and the
    calibrations of an ``mc-datasets`` run. The other figures of a run need its folder
    (probes, calibration readings, generation records), which is not published."""
    folder, out = Path(folder), Path(out)
    save = _Saver(out, png)
    results = _published(folder, "reproduce", storage.RESULTS)
    if results.is_file():
        _results(storage.read_json(results, "a run's summary"), save)
    summary = _published(folder, "mc-datasets", storage.MC_DATASETS_SUMMARY)
    if summary.is_file():
        save.made += render_mc_datasets(
            folder,
            out,
            png=png,
            summary=summary.name,
            calibration=_published(folder, "mc-datasets", storage.MC_CALIBRATION_DIR).name,
        )
    return save.made


def _on_final_curve(row: dict, calibration: Calibration) -> bool:
    """Whether a sweep row lies on the chosen K (and, for MC FASB, the chosen threshold)."""
    if row["top_k"] != calibration.top_k:
        return False
    if row["task"] == "mc" and row["policy"] == searched()[0].name:
        return row["threshold"] == calibration.thresholds.get("mc")
    return True


def _k_selection(row: dict, sweep: list[dict]) -> bool:
    """Whether an MC FASB sweep row lies at the threshold its K was compared at (the
    first threshold tried for that fold and K)."""
    first = next(
        r["threshold"]
        for r in sweep
        if (r["fold"], r["top_k"], r["task"], r["policy"])
        == (row["fold"], row["top_k"], "mc", row["policy"])
    )
    return row["threshold"] == first
