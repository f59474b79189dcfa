"""The policy registry: each policy's one registration, and the settings it is built from.

A policy's logic is its class (the decision engine is :mod:`fasb_lens.decisions`); what
the rest of fasb_lens knows about it is its :class:`PolicySpec`, registered once in the
policy's own module: how it is built from :class:`PolicySettings`, which artifacts it
takes, whether and how calibration searches its strength, which policy's calibrated
settings it shares, which policy it is a random-direction control of, which default
tables list it, and whether the leak-free protocol also scores it. Experiments read
these fields; no list of policies exists anywhere else, so a policy registered in one
file (or inside a notebook or a test, :meth:`Registry.registered`) appears in
``reproduce``'s table and is calibrated with no other edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fasb_lens.decisions import DEFAULT_TRACKER, Policy
from fasb_lens.options import NON_NEGATIVE, PROBABILITY, option
from fasb_lens.registry import Registry


@dataclass(frozen=True)
class PolicySettings:
    """The settings a policy is built from by name; every default is written here once.

    ``alpha``, ``threshold`` and ``backtrack_tokens`` are the paper's alpha, beta and s
    (tuned for LLaMA2-7B-chat: calibrate them for another model); ``tracker`` names the
    tracker a deciding policy reads; ``caa`` is CAA's residual vector; ``seed`` draws a
    control's random directions; ``options`` go to policies that take more (FASB:
    ``running_mean``, ``max_backtracks``). The command line keeps each option in its range
    (a threshold in [0, 1]); in code, each policy checks its own settings (a threshold
    above 1 is a way to trigger at every check).
    """

    alpha: float = option(60.0, help="steering strength (the paper's alpha)", bounds=NON_NEGATIVE)
    threshold: float = option(
        0.6, help="trigger below this p_true (the paper's beta)", bounds=PROBABILITY
    )
    backtrack_tokens: int = option(
        10, help="tokens dropped on a trigger (the paper's s)", bounds=NON_NEGATIVE
    )
    tracker: str = DEFAULT_TRACKER
    caa: Any = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.threshold < 0 or self.backtrack_tokens < 0:
            raise ValueError(
                "alpha, threshold and backtrack_tokens must be >= 0, got "
                f"{self.alpha}, {self.threshold}, {self.backtrack_tokens}"
            )


@dataclass(frozen=True)
class StrengthSearch:
    """How calibration searches a policy's strength on validation questions: the grid
    each task's search starts from (then extends and refines), and whether the policy's
    threshold is searched jointly with it (the thresholded policy also chooses the number
    of anchored heads)."""

    grids: Mapping[str, tuple[float, ...]]
    threshold: bool = False


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy.

    Attributes:
        name, description, aliases: how it is named (``aliases``: the paper's names).
        build: the policy from :class:`PolicySettings`.
        needs: the artifacts it takes: ``"steering"`` (the anchored heads' vectors and
            tracker) and/or ``"caa"`` (CAA's residual vector).
        search: how calibration searches its strength; ``None``: it is not searched.
        settings_from: the searched policy whose calibrated strength (and threshold) it
            uses (``detector_only`` and FASB's control use FASB's).
        control_of: the policy it is the random-direction control of (its directions are
            drawn anew for every question; tables pair the two).
        default_strength: its strength when nothing is calibrated (``None``: the
            settings' ``alpha``).
        tables: the default tables that list it (``"truthfulqa"``: ``reproduce``;
            ``"datasets"``: ``mc-datasets``).
        leak_free: also scored under the leak-free multiple-choice protocol, as
            ``NAME_question``: one decision per question, made from the model's own
            unsteered answer before any candidate is seen.
        compared_with: the policies a table compares it with (a paired difference with
            its interval and test), besides ``none`` and its random-direction control.
        label, color: its name and colour in figures (``None``: its name, and a colour
            no registered policy uses; a control derives both from its policy's).
        tasks: the tasks a run evaluates it on (``"mc"``, ``"generation"``).
    """

    name: str
    build: Callable[[PolicySettings], Policy]
    description: str
    aliases: tuple[str, ...] = ()
    needs: tuple[str, ...] = ("steering",)
    search: StrengthSearch | None = None
    settings_from: str | None = None
    control_of: str | None = None
    default_strength: float | None = None
    tables: tuple[str, ...] = ("truthfulqa",)
    leak_free: bool = False
    compared_with: tuple[str, ...] = ()
    label: str | None = None
    color: str | None = None
    tasks: tuple[str, ...] = ("mc", "generation")

    @property
    def calibrated_as(self) -> str | None:
        """The searched policy whose calibrated settings this one uses (``None``: none)."""
        return self.name if self.search is not None else self.settings_from


POLICIES: Registry[PolicySpec] = Registry("policy")
"""Every registered policy, in registration order (the order tables list them in)."""

register = POLICIES.register
unregister = POLICIES.unregister
resolve = POLICIES.resolve
policy_spec = POLICIES.get


def policy_names(table: str | None = None) -> tuple[str, ...]:
    """Every registered policy name, or those in the default ``table``."""
    return tuple(spec.name for spec in POLICIES if table is None or table in spec.tables)


def searched() -> list[PolicySpec]:
    """The policies calibration searches: the thresholded one first, then the others in
    registration order."""
    specs = [spec for spec in POLICIES if spec.search is not None]
    return sorted(specs, key=lambda spec: not spec.search.threshold)  # type: ignore[union-attr]


def parse_strength(text: str) -> str:
    """``NAME=VALUE``, a policy's strength when it is not calibrated, in canonical form
    (the policy's registered name; the value a number >= 0)."""
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not number >= 0:
        raise ValueError(f"--strength takes NAME=VALUE with VALUE >= 0, got {text!r}")
    return f"{resolve(name)}={number:g}"


def strengths_option() -> Any:
    """The ``--strength NAME=VALUE`` option of a run's settings (declared here once)."""
    return option(
        (),
        help="a policy's strength when not calibrated, as NAME=VALUE (default: --alpha, or "
        "the strength its registration gives, e.g. caa=5)",
        flags=("--strength",),
        names=parse_strength,
    )


def uncalibrated_strength(policy: str, strengths: Sequence[str], alpha: float) -> float:
    """``policy``'s strength when nothing is calibrated: the one given for it (or for the
    policy whose settings it shares) in ``strengths`` (``NAME=VALUE``), else its
    registration's default, else ``alpha``."""
    given = dict(parse_strength(text).split("=") for text in strengths)
    spec = policy_spec(policy)
    source = spec.calibrated_as or spec.name
    if source in given:
        return float(given[source])
    default = policy_spec(source).default_strength
    return alpha if default is None else default


def make_policy(name: str, **settings: Any) -> Policy:
    """A policy by name (as the command line and the experiment runner name them).

    ``settings`` are the fields of :class:`PolicySettings`; other keywords are collected
    into its ``options``.
    """
    known = {f.name for f in fields(PolicySettings)}
    options = dict(settings.pop("options", {}) or {})
    options.update({key: settings.pop(key) for key in list(settings) if key not in known})
    return policy_spec(name).build(PolicySettings(**settings, options=options))


def adjusted(policy: Policy, **changes: Any) -> Policy:
    """``policy`` with settings changed (``alpha=``, ``threshold=``; ``None`` leaves one
    as it is): those it has, on itself or on the policy it wraps (a control's ``base``)."""
    base = getattr(policy, "base", None)
    if isinstance(base, Policy):
        return replace(policy, base=adjusted(base, **changes))  # type: ignore[call-arg]
    names = {f.name for f in fields(policy)}  # type: ignore[arg-type]
    chosen = {k: v for k, v in changes.items() if k in names and v is not None}
    return replace(policy, **chosen) if chosen else policy  # type: ignore[type-var]


def setting(policy: Policy, name: str) -> Any:
    """A setting of ``policy`` or of the policy it wraps (``None`` if it has none)."""
    return getattr(getattr(policy, "base", policy), name, None)
