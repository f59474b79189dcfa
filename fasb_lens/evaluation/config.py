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
from fasb_lens.models import DTYPES
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
    "fasb_random",
    "fixed_random",
)
CONTROLS = ("fasb_random", "fixed_random")
"""Methods run with random directions drawn anew for every question (multiple choice) or
batch of questions (generation), ``control_seeds`` draws each, pooled in the tables."""
QUESTION_PROTOCOL = ("fasb", "fasb_random")
"""Methods also scored under the leak-free multiple-choice protocol, as ``NAME_question``."""
TRACKERS = ("auto", "probe", "context")
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
    dtype: str = option(
        "float32",
        help="the model's parameter dtype: float32, or half precision as the authors' run "
        "(float16 on a GPU; bfloat16 on a CPU that computes it natively, e.g. with AMX)",
        choices=DTYPES,
    )
    n_folds: int = option(
        2, help="cross-validation folds", flags=("--n-folds", "--folds"), bounds=Bounds(minimum=2)
    )
    val_fraction: float = 0.2
    train_fraction: float = 1.0
    seed: int = option(42, help="seed of the folds' validation draws")
    top_k: int = option(24, help="anchored heads", bounds=AT_LEAST_ONE)
    direction: str = option(
        "prototype",
        help="steering directions: prototype (class means, the authors' run) or probe weights",
        choices=DIRECTION_KINDS,
    )
    probe_answers: str = option(
        "auto",
        help="probing answers: mc_task.json's MC2 answers where present (auto), or the CSV's",
        choices=("auto", "mc_task", "csv"),
    )
    mc_offset: int = option(
        1,
        help="answer tokens FASB's MC checks start late: 1 as in the authors' code, 0 as described",
        bounds=NON_NEGATIVE,
    )
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
    batch_size: int = option(64, help="prompts generated together", bounds=AT_LEAST_ONE)
    tuning_seed: int = 0
    calibrate: bool = option(
        True, help="use --alpha/--threshold/--top-k as given instead of choosing them"
    )
    tracker: str = option(
        "auto",
        help="FASB's tracker: probe (the authors'), context (probes trained inside the "
        "evaluation prompt), or auto (the better one on validation)",
        choices=TRACKERS,
    )
    control_seeds: int = option(
        1,
        help="random draws per question of each control method (each question gets its own "
        "directions, so a control's mean covers many draws)",
        bounds=AT_LEAST_ONE,
    )
    top_k_candidates: tuple[str, ...] = option(
        ("12", "24", "48"), help="numbers of anchored heads calibration chooses among"
    )
    question_protocol: bool = option(
        True, help="leave out the leak-free multiple-choice protocol (one decision per question)"
    )
    calibration_questions: int | None = None
    calibration_judge: str = "embedding-acc"

    def __post_init__(self) -> None:
        check_options(self)
        for name, bounds in (("val_fraction", FRACTION), ("calibration_questions", AT_LEAST_ONE)):
            value = getattr(self, name)
            problem = bounds.problem(value) if value is not None else None
            if problem:
                raise ValueError(f"{name} {problem}")
        for text in self.top_k_candidates:
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"top_k_candidates holds {text!r}; expected positive integers")
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

    @property
    def top_ks(self) -> tuple[int, ...]:
        return tuple(sorted({int(text) for text in self.top_k_candidates}))

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)
