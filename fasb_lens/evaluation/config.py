"""The settings of a TruthfulQA run (``fasb-lens reproduce``), saved as its ``config.json``.

Each field declares its command-line option (:mod:`fasb_lens.options`), so the default
written here is the one the command line, the runner and ``config.json`` use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fasb_lens.evaluation.judges import JUDGES
from fasb_lens.evaluation.truthfulqa import AnswerSource
from fasb_lens.options import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    PROBABILITY,
    Bounds,
    check_options,
    option,
)
from fasb_lens.policies import resolve
from fasb_lens.steering import DIRECTION_KINDS

DEFAULT_METHODS = (
    "none",
    "fixed",
    "caa",
    "fasb",
    "fasb_fixed_strength",
    "fasb_no_backtrack",
    "after_question",
)
DEFAULT_JUDGES = ("bleu-acc", "rouge-l-acc", "embedding-acc", "info-check")
INFO_JUDGES = ("info-check", "allenai-info")
TASKS = ("mc", "generation")


def _judge(name: str) -> str:
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; known: {', '.join(JUDGES)}")
    return name


def _task(name: str) -> str:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return name


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; saved as ``config.json`` next to its results."""

    data: str = option(
        help="TruthfulQA CSV or folder (with mc_task.json), 'mini' or 'hub'",
        flags=("--truthfulqa", "--data"),
    )
    n_questions: int | None = option(
        None,
        help="only the first N questions (authors' order)",
        flags=("--questions",),
        bounds=AT_LEAST_ONE,
    )
    mc_task: str | None = option(None, help="mc_task.json (default: the one next to the CSV)")
    methods: tuple[str, ...] = option(
        DEFAULT_METHODS,
        help="policies to compare (also baseline = none, iti = fixed; a,b or a b)",
        names=resolve,
    )
    judges: tuple[str, ...] = option(
        DEFAULT_JUDGES, help=f"judges of generated answers, of {', '.join(JUDGES)}", names=_judge
    )
    tasks: tuple[str, ...] = option(
        TASKS, help="mc and/or generation", flags=("--tasks", "--metrics"), names=_task
    )
    model: str | None = option(None, help="hub name or folder (default: the embedded model)")
    n_folds: int = option(
        2, help="cross-validation folds", flags=("--n-folds", "--folds"), bounds=Bounds(minimum=2)
    )
    val_fraction: float = 0.2
    train_fraction: float = 1.0
    seed: int = option(42, help="seed of the folds' validation draws")
    top_k: int = option(24, help="anchored heads", bounds=AT_LEAST_ONE)
    direction: str = option("probe", help="steering directions", choices=DIRECTION_KINDS)
    alpha: float = option(60.0, help="strength of FASB's vectors", bounds=NON_NEGATIVE)
    threshold: float = option(0.6, help="trigger below this p_true", bounds=PROBABILITY)
    backtrack_tokens: int = option(10, help="tokens dropped on a trigger", bounds=NON_NEGATIVE)
    fixed_alpha: float | None = option(
        None, help="strength of ITI (default: --alpha)", bounds=NON_NEGATIVE
    )
    caa_alpha: float = option(5.0, help="strength of CAA's residual vector", bounds=NON_NEGATIVE)
    caa_layer: int | None = option(
        None, help="CAA's residual layer (default: the middle one)", bounds=NON_NEGATIVE
    )
    max_new_tokens: int = option(
        50, help="token budget of each generated answer", bounds=AT_LEAST_ONE
    )
    mc_source: AnswerSource = option(
        "mc_task", help="multiple-choice answers from", choices=("mc_task", "csv")
    )
    primer: str | None = option(None, help="QA primer file (default: fasb_lens' own)")
    instruction: str | None = option(None, help="instruction file (default: fasb_lens' own)")
    batch_size: int = option(8, help="prompts generated together", bounds=AT_LEAST_ONE)
    tuning_seed: int = 0
    calibrate: bool = option(
        True, help="use --alpha/--threshold as given instead of choosing them on validation"
    )
    calibration_questions: int = 32
    calibration_judge: str = "embedding-acc"

    def __post_init__(self) -> None:
        check_options(self)
        for name, bounds in (("val_fraction", FRACTION), ("calibration_questions", AT_LEAST_ONE)):
            problem = bounds.problem(getattr(self, name))
            if problem:
                raise ValueError(f"{name} {problem}")
        object.__setattr__(self, "methods", tuple(resolve(name) for name in self.methods))
        for name in self.tasks:
            _task(name)
        for name in self.judges:
            _judge(name)
        if not self.methods:
            raise ValueError("no methods to evaluate")
        if self.n_questions is not None and self.n_questions < 2 * self.n_folds:
            raise ValueError(
                f"--questions must be at least {2 * self.n_folds} for {self.n_folds} folds"
            )
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        for name in ("primer", "instruction", "mc_task"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"the {name} file {path} does not exist")

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)
