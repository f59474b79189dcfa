"""The decision engine: what a steering policy is, how it decides, and the registry.

A **policy** says three things: what vector to add (:meth:`Policy.intervention`), at
which strength from the start (:meth:`Policy.initial_strength`), and what to do when the
tracker reports a reading (:meth:`Policy.decide`). It holds no model and runs nothing:
token-by-token generation (:mod:`fasb_lens.generation`) and teacher-forced scoring
(:mod:`fasb_lens.policy_walk`) are two drivers that feed it the same :class:`Check`
objects through one :class:`Tracking` per sequence, so a policy's check window, strength
and backtracking arithmetic exist once.

A reading is counted in tokens, ``n_tokens``, as each driver documents:

* generation: the tokens generated so far, the one chosen from this reading included;
* scoring: the index of the answer token the reading was taken at (``-1`` for the
  prompt's last token), the authors' multiple-choice convention.

A trigger keeps the first ``keep`` tokens and steers from the next position on at its
strength; ``keep < n_tokens`` is a backtrack.

Policies are registered by name (:func:`register`, :func:`make_policy`); a new policy is
one module with a class and a ``register`` call, imported in
``fasb_lens/policies/__init__.py``, plus one test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from torch import Tensor
    from transformer_lens.model_bridge import TransformerBridge

    from fasb_lens.interventions import Hooks, Positions, Strength


class Intervention(Protocol):
    """What a policy adds to the model: a steering artifact's vectors.

    ``first_layer`` is the lowest block the hooks change: below it a steered forward
    computes exactly what an unsteered one does.
    """

    @property
    def first_layer(self) -> int: ...

    def hooks(
        self, strength: Strength | Tensor, *, positions: Positions = "last", offset: int = 0
    ) -> Hooks: ...

    def check_model(self, model: TransformerBridge) -> None: ...


@dataclass(frozen=True)
class Check:
    """One tracker reading offered to a policy.

    ``p_true`` is the reading; ``segment_mean`` the mean of the readings since the
    sequence began or since the last trigger; ``ending`` says the sequence ends here (EOS,
    a stop string, the token budget, an answer's last token); ``at_prompt_end`` that the
    reading was taken at the prompt's last token, before any answer token.
    """

    n_tokens: int
    p_true: float
    segment_mean: float
    ending: bool = False
    at_prompt_end: bool = False
    triggers: int = 0
    segment_start: int = 0


@dataclass(frozen=True)
class Trigger:
    """Steer from now on: keep the first ``keep`` tokens, steer at ``strength``."""

    strength: float
    keep: int
    p_true: float


@dataclass(frozen=True)
class Decision:
    """A policy's answer to a :class:`Check`: not a check, a passed check, or a trigger."""

    checked: bool = False
    trigger: Trigger | None = None


CONTINUE = Decision()
"""Not a check point: nothing to do."""
PASSED = Decision(checked=True)
"""Checked, and the reading passed."""

Family = Literal["none", "fixed", "fasb", "caa"]
"""Policies of one family share a calibrated strength (FASB's variants share FASB's)."""


class Policy:
    """Base of every steering policy; see the module docstring."""

    name: str = "policy"
    family: Family = "none"
    tracker: str = "probe"
    """The tracker whose readings this policy decides on (and traces report)."""

    def initial_strength(self) -> float:
        """Strength applied from the first position on (0: none until a trigger)."""
        return 0.0

    def intervention(self, steering: Any) -> Intervention | None:
        """What this policy adds, given the anchored heads' ``steering`` (may be ``None``)."""
        return None

    @property
    def decides(self) -> bool:
        """Whether this policy ever acts on readings."""
        return False

    def may_trigger(self, triggers: int) -> bool:
        """Whether a sequence that triggered ``triggers`` times may trigger again."""
        return False

    def decide(self, check: Check) -> Decision:
        """What to do at a reading (the default: nothing)."""
        return CONTINUE


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


def require_steering(policy: Policy, steering: Any) -> Any:
    """``steering``, or a clear error when a policy that steers the heads has none."""
    if steering is None:
        raise ValueError(f"the {policy.name} policy needs a steering artifact (anchored heads)")
    return steering


@dataclass
class Tracking:
    """One sequence's decision state, shared by both drivers.

    A driver calls :meth:`observe` with each reading in order; the policy's decision
    comes back, and a trigger starts a new segment at its ``keep``.
    """

    policy: Policy
    triggers: int = 0
    segment_start: int = 0
    segment: list[float] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether a later reading can still change anything."""
        return self.policy.decides and (
            self.triggers == 0 or self.policy.may_trigger(self.triggers)
        )

    def observe(
        self,
        n_tokens: int,
        p_true: float | None,
        *,
        ending: bool = False,
        at_prompt_end: bool = False,
    ) -> Decision:
        if p_true is None or not self.policy.decides:
            return CONTINUE
        self.segment.append(p_true)
        decision = self.policy.decide(
            Check(
                n_tokens=n_tokens,
                p_true=p_true,
                segment_mean=sum(self.segment) / len(self.segment),
                ending=ending,
                at_prompt_end=at_prompt_end,
                triggers=self.triggers,
                segment_start=self.segment_start,
            )
        )
        if decision.trigger is not None:
            self.triggers += 1
            self.segment_start = decision.trigger.keep
            self.segment = []
        return decision


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PolicySettings:
    """The settings a policy can be built from by name.

    ``alpha``, ``threshold`` and ``backtrack_tokens`` are the paper's alpha, beta and s;
    ``caa`` is CAA's residual vector; ``options`` go to policies that take more (for
    FASB: ``tracker``, ``running_mean``, ``max_backtracks``).
    """

    alpha: float = 60.0
    threshold: float = 0.6
    backtrack_tokens: int = 10
    caa: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy: its name, how to build it and what it needs."""

    name: str
    build: Callable[[PolicySettings], Policy]
    description: str
    family: Family
    needs: Literal["nothing", "steering", "caa"] = "steering"
    aliases: tuple[str, ...] = ()


POLICIES: dict[str, PolicySpec] = {}
ALIASES: dict[str, str] = {}
"""The paper's names for registered policies (``baseline`` = ``none``, ``iti`` = ``fixed``)."""


def register(spec: PolicySpec) -> PolicySpec:
    """Add a policy to the registry under its name and aliases."""
    for name in (spec.name, *spec.aliases):
        if name in POLICIES or name in ALIASES:
            raise ValueError(f"a policy named {name!r} is already registered")
    POLICIES[spec.name] = spec
    for alias in spec.aliases:
        ALIASES[alias] = spec.name
    return spec


def unregister(name: str) -> None:
    """Remove a registered policy (for tests and experiments)."""
    spec = POLICIES.pop(name)
    for alias in spec.aliases:
        ALIASES.pop(alias, None)


def policy_names() -> tuple[str, ...]:
    """Every registered policy name, in registration order."""
    return tuple(POLICIES)


def resolve(name: str) -> str:
    """The registered name of ``name`` (aliases resolved); unknown names raise."""
    canonical = ALIASES.get(name, name)
    if canonical not in POLICIES:
        known = ", ".join([*POLICIES, *(f"{a} (= {n})" for a, n in ALIASES.items())])
        raise ValueError(f"unknown policy {name!r}; known: {known}")
    return canonical


def policy_spec(name: str) -> PolicySpec:
    return POLICIES[resolve(name)]


def make_policy(name: str, **settings: Any) -> Policy:
    """A policy by name (as the command line and the experiment runner name them).

    ``settings`` are the fields of :class:`PolicySettings`; other keywords are collected
    into its ``options``.
    """
    fields = {"alpha", "threshold", "backtrack_tokens", "caa", "options"}
    options = dict(settings.pop("options", {}) or {})
    options.update({key: settings.pop(key) for key in list(settings) if key not in fields})
    return policy_spec(name).build(PolicySettings(**settings, options=options))
