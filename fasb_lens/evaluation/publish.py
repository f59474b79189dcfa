"""Publishing a finished run into ``results/``: the committed numbers, written by a command.

``fasb-lens publish RUN results/`` copies what a reader needs from a finished run folder
under names that say what they are (a ``reproduce`` run's files get the prefix
``truthfulqa_``, an ``mc-datasets`` run's ``mc_``), and refuses a run that has not
finished, so that every committed number comes from one command and one config (the
run's ``config.json``, published beside it, with the split seeds the numbers pool, which
``results.json`` and the table name too). A run with several seeds has finished when
every question has its records under every seed. Figures are rendered with ``fasb-lens
figures``.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from fasb_lens import storage
from fasb_lens.evaluation.run import run_command
from fasb_lens.policies import policy_spec

PUBLISHED = {
    "reproduce": tuple(
        (name, f"truthfulqa_{name}")
        for name in (
            storage.RUN_CONFIG,
            storage.RESULTS,
            storage.RESULTS_TABLE,
            storage.RESULTS_CSV,
            f"{storage.COMPARISONS_TABLE}.md",
            f"{storage.COMPARISONS_TABLE}.csv",
            storage.TIMINGS,
        )
    )
    + tuple(
        (name, f"truthfulqa_{name}.gz") for name in (storage.PER_QUESTION_CSV, storage.ANSWERS_CSV)
    ),
    "mc-datasets": (
        (storage.RUN_CONFIG, "mc_datasets_config.json"),
        (storage.MC_DATASETS_SUMMARY, storage.MC_DATASETS_SUMMARY),
        (f"{storage.MC_DATASETS_TABLE}.md", f"{storage.MC_DATASETS_TABLE}.md"),
        (f"{storage.MC_DATASETS_TABLE}.csv", f"{storage.MC_DATASETS_TABLE}.csv"),
        (f"{storage.MC_DATASETS_COMPARISONS}.md", f"{storage.MC_DATASETS_COMPARISONS}.md"),
        (f"{storage.MC_DATASETS_COMPARISONS}.csv", f"{storage.MC_DATASETS_COMPARISONS}.csv"),
        (storage.MC_DATASETS_LOG, f"{storage.MC_DATASETS_LOG}.gz"),
        (storage.TIMINGS, "mc_datasets_timings.json"),
        (storage.MC_CALIBRATION_DIR, "mc_calibration"),
    ),
}
"""Per command: each file (or folder) of its run folder and its name in ``results/``
(a name ending in ``.gz`` is written gzip-compressed: the per-question records of a full
run are tens of megabytes as text; ``pandas.read_csv`` reads them as they are)."""


def _unfinished(run: Path, command: str) -> str | None:
    """What a run folder still lacks (``None`` when it is finished)."""
    if command == "reproduce":
        if not (run / storage.RESULTS).is_file():
            return f"it has no {storage.RESULTS} yet"
        summary = storage.read_json(run / storage.RESULTS, "a run's summary")
        config = storage.read_json(run / storage.RUN_CONFIG, "a run's settings")
        compared = set(config.get("policies", ()))
        counts = {
            name: {task: entry["mean"].get(f"n_{task}", 0) for task in config.get("tasks", ())}
            for name, entry in summary["policies"].items()
        }
        # a question counts once per split seed (config.json before seeds: one)
        seeds = len(config.get("seeds") or [config.get("seed")])
        wanted = (config.get("n_questions") or 0) * seeds or max(
            (n for tasks in counts.values() for n in tasks.values()), default=0
        )
        for name, tasks in counts.items():
            # a policy runs the tasks its registration names; the leak-free protocol's rows
            # (NAME_question) are multiple choice only
            expected = policy_spec(name).tasks if name in compared else ("mc",)
            short = [t for t, n in tasks.items() if n < wanted and t in expected]
            if short:
                return f"policy {name} has not finished {', '.join(short)}"
        return None
    if not (run / storage.MC_DATASETS_SUMMARY).is_file():
        return f"it has no {storage.MC_DATASETS_SUMMARY} yet"
    return None


def publish(run: str | Path, results: str | Path) -> list[Path]:
    """Copy a finished run's files into ``results`` under their published names (see
    :data:`PUBLISHED`); returns the files written."""
    run, results = Path(run), Path(results)
    command = run_command(run)
    if command not in PUBLISHED:
        raise ValueError(
            f"{run} is not a finished `reproduce` or `mc-datasets` run folder "
            "(its config.json names no such command)"
        )
    problem = _unfinished(run, command)
    if problem is not None:
        raise ValueError(f"{run} has not finished: {problem}; run the same command again")
    written = []
    for source, target in PUBLISHED[command]:
        path = run / source
        if not path.exists():
            continue
        if path.is_dir():
            for file in sorted(path.glob("*.json")):
                written.append(storage.write_text(results / target / file.name, file.read_text()))
        else:
            copy = _gzip if target.endswith(".gz") else shutil.copyfile
            written.append(
                storage.write_atomic(
                    results / target, lambda out, path=path, copy=copy: copy(path, out)
                )
            )
    return written


def _gzip(source: Path, target: Path) -> None:
    """Compress ``source`` into ``target``, byte-identical for identical input (no time or
    name in the header), so a re-published unchanged run leaves git nothing to commit."""
    with source.open("rb") as raw, target.open("wb") as sink:
        with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0) as packed:
            shutil.copyfileobj(raw, packed)
