"""The settings of both suites' runs, saved as their ``config.json``: a TruthfulQA run
(``fasb-lens reproduce``, :class:`ExperimentConfig`) and a multiple-choice datasets run
(``fasb-lens mc-datasets``, :class:`DatasetsConfig`).

Each field declares its command-line option (:mod:`fasb_lens.options`), so the default
written here (or, for a policy setting, in :class:`~fasb_lens.policies.PolicySettings`)
is the one the command line, the runner and ``config.json`` use. Lists of names that
registries own (the policies of the table, the judges) default to what is registered
when the settings are made, and ``config.json`` records the list used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fasb_lens.anchoring import AnchoringSettings
from fasb_lens.data.mc import DATASETS, dataset
from fasb_lens.data.prompts import default_prompt, prompt_option
from fasb_lens.evaluation.fluency import DEFAULT_MAX_KL
from fasb_lens.evaluation.judges import JUDGES
from fasb_lens.models import ModelOptions
from fasb_lens.multiple_choice import AnswerSource
from fasb_lens.options import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    Bounds,
    check_options,
    option,
    same_option,
)
from fasb_lens.policies import (
    PolicySettings,
    parse_strength,
    policy_names,
    policy_spec,
    resolve,
    strengths_option,
)
from fasb_lens.splits import SplitSettings
from fasb_lens.trackers import tracker_names

TASKS = ("mc", "generation")
CONFIG_VERSION = 3
"""Version of ``config.json``: 3 keeps the split seeds in ``seeds``, the evaluation
prompt in ``prompt`` and the fluency budget in ``max_kl``; 2 named the compared policies
``policies`` and kept uncalibrated strengths in ``strengths``, with one ``seed``,
fasb_lens' own prompt unless files were given and no fluency budget unless ``max_kl`` is
there (read as such); version 1 (read too) had ``methods``, ``fixed_alpha`` and
``caa_alpha``."""


def _task(name: str) -> str:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return name


def max_kl_option() -> Any:
    """The fluency budget's option (``--max-kl``), the same for every calibrating command."""
    return option(
        DEFAULT_MAX_KL,
        help="fluency budget of calibration: no strength whose next-token KL from the "
        "unsteered model on validation answers exceeds it, in nats per token (inf: none)",
        bounds=Bounds(above=0, infinite=True),
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; saved as ``config.json`` next to its results."""

    data: str = option(
        "truthfulqa",
        help="TruthfulQA: the bundled copy (truthfulqa, the default), a CSV or a folder "
        "(with mc_task.json), the built-in mini set (mini) or the hub (hub)",
        flags=("--truthfulqa",),
    )
    n_questions: int | None = option(
        None,
        help="only the first N questions (authors' order)",
        flags=("--questions",),
        bounds=AT_LEAST_ONE,
    )
    mc_task: str | None = option(None, help="mc_task.json (default: the one next to the CSV)")
    policies: tuple[str, ...] = option(
        (),
        help="policies to compare (default: every policy registered for the TruthfulQA "
        "table; also baseline = none, iti = fixed; a,b or a b)",
        flags=("--policies", "--methods"),
        names=resolve,
    )
    judges: tuple[str, ...] = option(
        (),
        help="judges of generated answers (default: every offline judge)",
        names=JUDGES.resolve,
    )
    tasks: tuple[str, ...] = option(
        TASKS, help="mc and/or generation", flags=("--tasks", "--metrics"), names=_task
    )
    model: ModelOptions = ModelOptions()
    n_folds: int = same_option(SplitSettings, "n_folds")
    val_fraction: float = SplitSettings.val_fraction
    train_fraction: float = 1.0
    seeds: tuple[int, ...] = option(
        (),
        help="split seeds: the whole cross-validation (anchoring, calibration, evaluation) "
        "runs once per seed and the results pool, each question's seeds resampled together "
        f"(default: {SplitSettings.seed}, the authors' split; 42 1 2 or 42,1,2)",
        bounds=NON_NEGATIVE,
    )
    seed: int | None = option(
        None, help="one split seed: the same as --seeds SEED", bounds=NON_NEGATIVE
    )
    top_k: int = same_option(AnchoringSettings, "top_k")
    direction: str = same_option(AnchoringSettings, "direction")
    probe_answers: str = option(
        "auto",
        help="probing answers: mc_task.json's MC2 answers where present (auto), or the CSV's",
        choices=("auto", "mc_task", "csv"),
    )
    mc_offset: int = option(
        1,
        help="answer tokens FASB's MC checks start late: 1 as in the authors' code, 0 as described",
        bounds=Bounds(minimum=0),
    )
    alpha: float = same_option(PolicySettings, "alpha")
    threshold: float = same_option(PolicySettings, "threshold")
    backtrack_tokens: int = same_option(PolicySettings, "backtrack_tokens")
    strengths: tuple[str, ...] = strengths_option()
    caa_layer: int | None = option(
        None, help="CAA's residual layer (default: the middle one)", bounds=Bounds(minimum=0)
    )
    max_new_tokens: int = option(
        50, help="token budget of each generated answer", bounds=AT_LEAST_ONE
    )
    mc_source: AnswerSource = option(
        "mc_task", help="multiple-choice answers from", choices=("mc_task", "csv")
    )
    prompt: str | None = prompt_option()
    primer: str | None = option(None, help="QA primer file (default: the --prompt's)")
    instruction: str | None = option(None, help="instruction file (default: the --prompt's)")
    batch_size: int = option(64, help="prompts generated together", bounds=AT_LEAST_ONE)
    tuning_seed: int = AnchoringSettings.tuning_seed
    calibrate: bool = option(
        True, help="use --alpha/--threshold/--top-k as given instead of choosing them"
    )
    tracker: str = option(
        "auto",
        help="the tracker deciding policies read: probe (the authors'), context (probes "
        "trained inside the evaluation prompt), prototype, or auto (the better of "
        "--auto-trackers on validation)",
        choices=lambda: ("auto", *tracker_names()),
    )
    auto_trackers: tuple[str, ...] = option(
        ("probe", "context"),
        help="the trackers --tracker auto compares",
        choices=tracker_names,
    )
    control_seeds: int = option(
        1,
        help="random draws per question of each control policy (each question gets its own "
        "directions, so a control's mean covers many draws)",
        bounds=AT_LEAST_ONE,
    )
    top_k_candidates: tuple[int, ...] = option(
        (12, 24, 48),
        help="numbers of anchored heads calibration chooses among",
        bounds=AT_LEAST_ONE,
    )
    question_protocol: bool = option(
        True, help="leave out the leak-free multiple-choice protocol (one decision per question)"
    )
    max_kl: float = max_kl_option()
    calibration_questions: int | None = None
    calibration_judge: str = "embedding-acc"
    calibration_info_judge: str = "info-check"

    def __post_init__(self) -> None:
        check_options(self)
        for name, bounds in (("val_fraction", FRACTION), ("calibration_questions", AT_LEAST_ONE)):
            value = getattr(self, name)
            problem = bounds.problem(value) if value is not None else None
            if problem:
                raise ValueError(f"{name} {problem}")
        chosen = self.policies or policy_names("truthfulqa")
        offline = tuple(spec.name for spec in JUDGES if spec.offline)
        object.__setattr__(self, "policies", tuple(resolve(name) for name in chosen))
        object.__setattr__(self, "judges", tuple(JUDGES.resolve(n) for n in self.judges or offline))
        object.__setattr__(self, "strengths", tuple(map(parse_strength, self.strengths)))
        object.__setattr__(self, "top_k_candidates", tuple(int(k) for k in self.top_k_candidates))
        object.__setattr__(self, "seeds", self._split_seeds())
        object.__setattr__(self, "seed", None)
        object.__setattr__(self, "prompt", self.prompt or default_prompt(self.data))
        for name in self.tasks:
            _task(name)
        if not self.policies:
            raise ValueError("no policies to evaluate")
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

    def _split_seeds(self) -> tuple[int, ...]:
        """The split seeds: ``seeds``, or ``seed`` as one (both only where they agree),
        else the authors' 42."""
        seeds = tuple(int(seed) for seed in self.seeds)
        if self.seed is not None:
            if seeds and seeds != (self.seed,):
                named = " ".join(map(str, seeds))
                raise ValueError(
                    f"--seed {self.seed} and --seeds {named} disagree; give one of them"
                )
            seeds = (int(self.seed),)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds names a seed twice: {' '.join(map(str, seeds))}")
        return seeds or (SplitSettings.seed,)

    @property
    def top_ks(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.top_k_candidates)))

    @property
    def needs_caa(self) -> bool:
        """Whether a compared policy takes CAA's vector (the run then collects it)."""
        return any("caa" in policy_spec(name).needs for name in self.policies)

    @property
    def trackers_used(self) -> tuple[str, ...]:
        """The trackers this run may read (the chosen one, or those ``auto`` compares)."""
        return self.auto_trackers if self.tracker == "auto" else (self.tracker,)

    def settings(self) -> PolicySettings:
        """The policies' settings before calibration."""
        return PolicySettings(self.alpha, self.threshold, self.backtrack_tokens)

    def to_dict(self) -> dict[str, Any]:
        data = {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}
        del data["seed"]  # an alias of ``seeds``, resolved into it
        data["model"] = self.model.to_dict()  # not where it ran: a run resumes on any devices
        return {"config_version": CONFIG_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Settings from ``config.json`` (this version's, or an earlier one's)."""
        data = {key: value for key, value in data.items() if key != "command"}
        version = data.get("config_version", 1)
        data = _from_version_1(data) if version == 1 else data
        if version < 3:  # one seed; fasb_lens' own prompt unless files were named; no budget
            data.setdefault("prompt", "builtin")
            data.setdefault("max_kl", float("inf"))
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        if isinstance(values.get("model"), dict):
            values["model"] = ModelOptions(**values["model"])
        return cls(**values)


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 ``config.json`` in this version's names."""
    data = dict(data)
    if "methods" in data:
        data["policies"] = data.pop("methods")
    strengths = []
    if data.get("fixed_alpha") is not None:
        strengths.append(f"fixed={data['fixed_alpha']}")
    if "caa_alpha" in data:
        strengths.append(f"caa={data['caa_alpha']}")
    data["strengths"] = strengths
    data["model"] = {"name": data.pop("model", None), "dtype": data.pop("dtype", "float32")}
    data["top_k_candidates"] = [int(k) for k in data.get("top_k_candidates", (12, 24, 48))]
    return data


def _shipped() -> tuple[str, ...]:
    return tuple(spec.name for spec in DATASETS if spec.default_path is not None)


@dataclass(frozen=True)
class DatasetsConfig:
    """Everything that defines an ``mc-datasets`` run; saved as its ``config.json``."""

    datasets: tuple[str, ...] = option(
        (),
        help="datasets to evaluate (default: every one the data folder ships; a,b or a b)",
        flags=("--datasets", "--dataset"),
        names=lambda name: dataset(name).name,
    )
    story_cloze: str | None = option(None, help="the ROCStories cloze CSV, if you have it")
    policies: tuple[str, ...] = option(
        (),
        help="policies to compare (default: every policy registered for the datasets "
        "table; also baseline = none, iti = fixed; a,b or a b)",
        flags=("--policies", "--methods"),
        names=resolve,
    )
    limit: int = option(400, help="items per dataset (0: all)", bounds=NON_NEGATIVE)
    top_k: int = same_option(AnchoringSettings, "top_k")
    alpha: float = same_option(
        PolicySettings,
        "alpha",
        default=8.0,
        help="strength with --no-calibrate (8 keeps the default model fluent; the paper's "
        "60 does not)",
    )
    threshold: float = same_option(PolicySettings, "threshold")
    backtrack_tokens: int = same_option(
        PolicySettings,
        "backtrack_tokens",
        default=1,
        help="tokens dropped on a trigger (options are a few tokens long: with the paper's "
        "10, FASB would check only at an option's last token)",
    )
    strengths: tuple[str, ...] = strengths_option()
    calibrate: bool = option(
        True,
        help="use --alpha/--strength/--threshold as given instead of choosing them on each "
        "dataset's validation items",
    )
    max_kl: float = max_kl_option()
    seed: int = option(0, help="seed of the subset, the split and the controls' directions")
    model: ModelOptions = ModelOptions()
    batch_size: int = AnchoringSettings.batch_size

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", self.datasets or _shipped())
        policies = tuple(resolve(name) for name in self.policies or policy_names("datasets"))
        object.__setattr__(self, "policies", policies)
        object.__setattr__(self, "strengths", tuple(map(parse_strength, self.strengths)))
        lacking = [name for name in self.policies if "caa" in policy_spec(name).needs]
        if lacking:
            raise ValueError(f"policies {lacking} need a CAA vector, which the MC datasets lack")

    def settings(self) -> PolicySettings:
        return PolicySettings(self.alpha, self.threshold, self.backtrack_tokens)

    def to_dict(self) -> dict[str, Any]:
        data = {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}
        data["model"] = self.model.to_dict()  # not where it ran: a run resumes on any devices
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetsConfig:
        values = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "command"
        }
        values["model"] = ModelOptions(**values.get("model", {}))
        return cls(**values)
