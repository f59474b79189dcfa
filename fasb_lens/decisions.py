"""The decision engine: what a steering policy is, and how a sequence's readings reach it.

A **policy** says three things: what vector to add (:meth:`Policy.intervention`), at
which strength from the start (:meth:`Policy.initial_strength`), and what to do when the
tracker reports a reading (:meth:`Policy.decide`). It holds no model and runs nothing:
token-by-token generation (:mod:`fasb_lens.generation`) and teacher-forced scoring
(:mod:`fasb_lens.scoring`) are two drivers that feed it the same :class:`Check` objects
through one :class:`Tracking` per sequence, so a policy's check window, strength and
backtracking arithmetic exist once (the registered policies live in
:mod:`fasb_lens.policies`).

A reading is counted in tokens, ``n_tokens``, as each driver documents:

* generation: the tokens generated so far, the one chosen from this reading included;
* scoring: the index of the answer token the reading was taken at (``-1`` for the
  prompt's last token), the authors' multiple-choice convention.

A trigger keeps the first ``keep`` tokens and steers from the next position on at its
strength; ``keep < n_tokens`` is a backtrack. :meth:`Tracking.walk` offers a whole
sequence of readings in order; everything that replays readings (generation's reuse of
an unsteered answer, the scorer, calibration's check readings, the leak-free protocol)
walks them through it.

The drivers know the anchored heads only through the protocols here
(:class:`Intervention`, :class:`Tracker`, :class:`Anchored`), so this tier never imports
the method's artifacts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from jaxtyping import Float
    from torch import Tensor
    from transformer_lens.model_bridge import TransformerBridge

    from fasb_lens._types import Head
    from fasb_lens.interventions import Hooks, Positions, Strength


DEFAULT_TRACKER = "probe"
"""The tracker a policy reads unless told otherwise (the paper's: a logistic probe per
anchored head, its probabilities averaged)."""


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

    def per_row(self, rows: Sequence[Intervention]) -> Intervention:
        """One intervention acting as ``rows[r]`` on batch row ``r`` (each of this kind and
        at the same sites), so that one batch can carry several of them."""
        ...


class Tracker(Protocol):
    """Anything that maps the anchored heads' activations to a truthfulness probability.

    ``z`` holds the heads' activations in the order of ``heads``, with any leading batch
    and position dimensions: ``[..., k, d_head]``.
    """

    heads: tuple[Head, ...]

    def head_probabilities(
        self, z: Float[Tensor, "*batch k d_head"]
    ) -> Float[Tensor, "*batch k"]: ...

    def p_true(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, " *batch"]: ...


class Anchored(Protocol):
    """What the drivers need of a steering artifact: its heads, a tracker by name, and a
    check that it fits the model (:class:`fasb_lens.steering.Steering` is one)."""

    heads: tuple[Head, ...]

    def tracker(self, kind: str = DEFAULT_TRACKER, **options: Any) -> Tracker: ...

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
    """Steer from now on: keep the first ``keep`` tokens, steer at ``strength``; with
    ``drop``, discard the sequence instead (a detector that steers nothing: a scored
    candidate answer is left out, a generation stops)."""

    strength: float
    keep: int
    p_true: float
    drop: bool = False


@dataclass(frozen=True)
class Decision:
    """A policy's answer to a :class:`Check`: not a check, a passed check, or a trigger."""

    checked: bool = False
    trigger: Trigger | None = None


CONTINUE = Decision()
"""Not a check point: nothing to do."""
PASSED = Decision(checked=True)
"""Checked, and the reading passed."""


class Policy:
    """Base of every steering policy; see the module docstring."""

    name: str = "policy"
    tracker: str = DEFAULT_TRACKER
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

    def steady(self, strength: float) -> Policy:
        """This policy's steering at one ``strength`` from the start, deciding nothing
        (what the leak-free protocol applies to a whole question once it has decided)."""
        raise ValueError(f"the {self.name} policy has no steady form")


@dataclass(frozen=True)
class Unsteered(Policy):
    """No steering: nothing is added, nothing is decided; ``tracker`` is only read."""

    tracker: str = DEFAULT_TRACKER
    name: str = "none"


def require_steering(policy: Policy, steering: Any) -> Any:
    """``steering``, or a clear error when a policy that steers the heads has none."""
    if steering is None:
        raise ValueError(f"the {policy.name} policy needs a steering artifact (anchored heads)")
    return steering


@dataclass
class Tracking:
    """One sequence's decision state, shared by both drivers.

    A driver calls :meth:`observe` with each reading in order (or :meth:`walk` with
    several); the policy's decision comes back, and a trigger starts a new segment at its
    ``keep``.
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
        """The policy's decision at a reading; nothing once the policy may not trigger
        again (so a policy need not count its own triggers)."""
        if p_true is None or not self.active:
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

    def walk(
        self,
        readings: Sequence[float | None],
        *,
        first_count: int = 1,
        from_prompt_end: bool = True,
    ) -> Iterator[tuple[int, Decision]]:
        """Offer ``readings`` in order; yield each one's index and decision.

        Reading ``i`` counts ``first_count + i`` tokens, the last one ends the sequence,
        and with ``from_prompt_end`` the first was taken at the prompt's last token. The
        defaults are generation's count (a generated answer's readings, step by step);
        the caller stops where it has what it needs (a trigger, the first check).
        """
        last = len(readings) - 1
        for index, p_true in enumerate(readings):
            yield (
                index,
                self.observe(
                    first_count + index,
                    p_true,
                    ending=index == last,
                    at_prompt_end=from_prompt_end and index == 0,
                ),
            )


def first_trigger(
    policy: Policy, readings: Sequence[float | None], **counting: Any
) -> tuple[int, Trigger] | None:
    """Where ``policy`` first triggers on ``readings`` (walked from a fresh state, as
    :meth:`Tracking.walk` counts them), and the trigger; ``None`` if it never does."""
    for index, decision in Tracking(policy).walk(readings, **counting):
        if decision.trigger is not None:
            return index, decision.trigger
    return None


def first_check(policy: Policy, readings: Sequence[float | None], **counting: Any) -> int | None:
    """The index of the first reading ``policy`` checks (passed or not), walked from a
    fresh state as :meth:`Tracking.walk` counts them; ``None`` if it checks none."""
    for index, decision in Tracking(policy).walk(readings, **counting):
        if decision.checked:
            return index
    return None
