"""The checks of a whole ``reproduce``: one timed on a subset and scaled to the dataset,
and one run in two processes against one process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fasb_lens.bench.gpu_check.results import timed
from fasb_lens.models import ModelOptions


def time_reproduce(model, questions: int, results, dtype) -> None:
    """A ``reproduce`` of the first ``questions`` questions, timed and scaled to the
    dataset (every phase grows linearly with the questions)."""
    from fasb_lens.data import load_questions
    from fasb_lens.evaluation.config import ExperimentConfig
    from fasb_lens.evaluation.experiment import Experiment

    with timed(results, f"reproduce --questions {questions}", dtype) as found:
        config = ExperimentConfig(n_questions=questions, model=ModelOptions(dtype=dtype))
        with tempfile.TemporaryDirectory(prefix="fasb-gpu-check-") as out:
            start = time.perf_counter()
            experiment = Experiment(config, out, model=model, progress=False)
            experiment.run()
            wall = time.perf_counter() - start
            phases = dict(experiment.timings)
        total = len(load_questions(config.data))
        found["numbers"] = {"wall_s": round(wall, 1), "phases": phases, "full_estimate_s": None}
        found["numbers"]["full_estimate_s"] = round(wall * total / questions)
        found["detail"] = (
            f"{wall:.0f} s for {questions} questions; all {total} in about "
            f"{wall * total / questions / 60:.0f} min on this GPU"
        )


def check_processes(options: ModelOptions, results, dtype) -> None:
    """``reproduce`` on 8 questions in two processes writes the table of one process."""
    with timed(results, "reproduce in 2 processes = 1", dtype) as found:
        with tempfile.TemporaryDirectory(prefix="fasb-gpu-check-") as root:
            args = ["reproduce", "--truthfulqa", "mini", "--questions", "8", "--mc-source", "csv"]
            args += ["--policies", "none,fasb", "--judges", "bleu-acc,info-check"]
            args += ["--max-new-tokens", "12", "--dtype", dtype, "--no-progress"]
            if options.name:
                args += ["--model", options.name]
            env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
            walls = {}
            for count in (1, 2):
                out = Path(root) / f"p{count}"
                launcher = [sys.executable]
                if count > 1:
                    launcher += ["-m", "torch.distributed.run", "--standalone"]
                    launcher += ["--nproc-per-node", str(count)]
                start = time.perf_counter()
                done = subprocess.run(
                    [*launcher, "-m", "fasb_lens.cli", *args, "--out", str(out)],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                walls[count] = round(time.perf_counter() - start, 1)
                if done.returncode != 0:
                    raise RuntimeError(f"{count} process(es): {done.stderr.strip()[-300:]}")
            same = (Path(root) / "p1" / "table.md").read_text() == (
                Path(root) / "p2" / "table.md"
            ).read_text()
            found["numbers"] = {"wall_s": walls, "same_table": same}
            found["detail"] = f"same table: {same}; {walls[1]} s alone, {walls[2]} s in two"
            if not same:
                found["status"] = "FAIL"
