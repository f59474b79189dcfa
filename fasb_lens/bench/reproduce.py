"""The end-to-end entry: a whole ``reproduce`` on a fixed subset, extrapolated."""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fasb_lens.bench.context import BenchContext
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.experiment import Experiment
from fasb_lens.models import ModelOptions, dtype_name


def bench_reproduce(ctx: BenchContext) -> dict[str, Any]:
    """``fasb-lens reproduce`` with every default (calibration, both folds, every method
    and control, multiple choice and generation, every judge) on the first
    ``reproduce_questions`` questions in the authors' order, in a temporary folder.

    The run uses the bench's model, in its dtype (``fasb-lens bench --dtype``).
    ``full_s`` is an estimate, not a measurement: the subset's wall time scaled by the
    dataset's number of questions over the subset's. Every phase grows linearly with the
    questions (activations with their prompts, calibration with the validation questions,
    evaluation with the test questions), so the scaling is linear; ``phases`` gives the
    measured seconds of each part. ``ctx.reproduce_out`` (a new folder) keeps the run, so
    its tables and figures can be used.
    """
    name, questions = ctx.questions()
    folder = ctx.data_dir / "truthfulqa" if ctx.data_dir else None
    dtype = dtype_name(ctx.model)
    if name == "TruthfulQA" and folder is not None:
        config = ExperimentConfig(
            data=str(folder), n_questions=ctx.reproduce_questions, model=ModelOptions(dtype=dtype)
        )
    else:
        config = ExperimentConfig(
            data="mini",
            n_questions=ctx.reproduce_questions,
            mc_source="csv",
            model=ModelOptions(dtype=dtype),
        )
    with ExitStack() as stack:
        kept = Path(ctx.reproduce_out) if ctx.reproduce_out else None
        out = kept or stack.enter_context(tempfile.TemporaryDirectory(prefix="fasb-bench-"))
        if kept is not None and kept.exists():
            if any(kept.iterdir()):
                raise ValueError(
                    f"--reproduce-out {kept} is not empty: a resumed run "
                    "would not time the whole reproduction; give a new folder"
                )
        start = time.perf_counter()
        experiment = Experiment(config, out, model=ctx.model, progress=ctx.progress)
        experiment.run()
        wall = time.perf_counter() - start
    scale = len(questions) / config.n_questions  # type: ignore[operator]
    return {
        "dataset": name,
        "questions": config.n_questions,
        "dataset_questions": len(questions),
        "policies": list(config.policies),
        "dtype": dtype,
        "wall_s": round(wall, 1),
        "phases": experiment.timings,
        "profile": experiment.folder.profile.to_dict(),
        "full_s": round(wall * scale, 0),
        "full_s_is": f"an estimate: wall_s x {len(questions)} / {config.n_questions} questions",
        "target_full_s": 3600,
    }
