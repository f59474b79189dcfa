"""The policies' second driver: decisions taken along teacher-forced answers.

Multiple-choice scoring (:mod:`fasb_lens.scoring`) knows every answer token in advance, so
it reads the tracker at all of an answer's tokens in one pass and then offers the
readings to the policy one by one, as generation (:mod:`fasb_lens.generation`, the first
driver) offers them while it goes. A :class:`PolicyWalk` is one policy's side of that: it
offers the reading at the prompt's last token (counted as token ``-1``), then each
answer's readings in order, and collects the triggers; the scorer re-scores each
triggered answer steered from its kept tokens on, and the walk goes on along the steered
readings from the trigger's segment while the policy may trigger again.

The reading at answer token ``t`` counts as ``t - answer_offset`` tokens (the authors'
multiple-choice convention with ``answer_offset = 0``: one token later than generation's
count). For FASB this means checks from the ``(s+1)``-th answer token on and at the
last; at the first reading below the threshold the answer is scored again with the
vectors added from ``s`` tokens before it, at strength ``alpha * (1 - p_true)``. A policy
that steers from the start (ITI, CAA) steers every answer position.

A steering *schedule* lists ``(position, strength)`` steps in absolute positions: from
``position`` on the strength is ``strength`` (a later step replaces an earlier one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from jaxtyping import Float
from torch import Tensor

from fasb_lens.decisions import Policy, Tracking, Trigger

Schedule = list[tuple[int, float]]
"""Steps ``(position, strength)``: the strength from that absolute position on."""


def strengths(schedule: Schedule, first: int, length: int) -> list[float]:
    """The strength at each fed position of an answer of ``length`` tokens whose fed
    positions (the prompt's last token, then its tokens) begin at absolute ``first``."""
    values = []
    for position in range(first, first + length + 1):
        total, previous = 0.0, 0.0
        for start, strength in schedule:
            if position >= start:
                total += strength - previous
            previous = strength
        values.append(total)
    return values


@dataclass
class Outcome:
    """What a policy decided for one answer: whether and at which answer token it
    triggered, the reading that decided (a trigger's, or the prompt end's), the
    strength the answer was last scored at, and whether the trigger dropped it."""

    triggered: bool = False
    trigger_token: int | None = None
    p_true: float | None = None
    strength: float = 0.0
    dropped: bool = False


@dataclass
class Feed:
    """What one policy feeds in a steered pass: answers ``rows``, each with its steering
    schedule; ``track`` asks for the anchored heads' activations (later readings)."""

    policy: Policy
    rows: list[int]
    schedules: list[Schedule]
    track: bool


@dataclass
class PolicyWalk:
    """One policy's decisions over a question's answers while the scorer's passes run.

    ``totals`` are each answer's summed log-probability from the latest pass that scored
    it; ``pending`` the answers waiting to be re-scored (``row: (answer token of the
    trigger, or None at the prompt's end; the trigger)``).
    """

    policy: Policy
    lengths: list[int]
    steer_from: int
    answer_offset: int
    initial: float
    outcomes: list[Outcome]
    schedules: list[Schedule]
    trackings: list[Tracking]
    totals: Float[Tensor, " answers"] | None = None
    pending: dict[int, tuple[int | None, Trigger]] = field(default_factory=dict)

    @classmethod
    def begin(
        cls, policy: Policy, lengths: Sequence[int], *, steer_from: int, answer_offset: int
    ) -> PolicyWalk:
        """The state before any pass: a policy with an initial strength steers every answer
        from the absolute position ``steer_from`` on."""
        initial = float(policy.initial_strength())
        return cls(
            policy,
            list(lengths),
            steer_from,
            answer_offset,
            initial,
            [Outcome(strength=initial) for _ in lengths],
            [[(steer_from, initial)] if initial else [] for _ in lengths],
            [Tracking(policy) for _ in lengths],
        )

    def first_feed(self) -> Feed:
        """Every answer, steered from the start (a policy with an initial strength)."""
        rows = list(range(len(self.lengths)))
        return Feed(self.policy, rows, self.schedules, self.policy.decides)

    def first_decisions(self, prompt_end: float, readings: Float[Tensor, "answers pos"]) -> None:
        """Offer the reading at the prompt's last token, then each answer's ``readings``
        at its tokens (from its first pass)."""
        for row, tracking in enumerate(self.trackings):
            decision = tracking.observe(-1, prompt_end, at_prompt_end=True)
            if decision.checked:
                self.outcomes[row].p_true = prompt_end
            if decision.trigger is not None:
                self._triggered(row, None, decision.trigger)
        for row, tracking in enumerate(self.trackings):
            if row not in self.pending and not self.outcomes[row].dropped:
                self._walk(row, tracking, readings[row], self.answer_offset)

    def _triggered(self, row: int, position: int | None, trigger: Trigger) -> None:
        """A trigger at answer token ``position`` (``None``: the prompt's end): the answer
        waits to be re-scored steered, or, for a trigger that drops, is left out as it is."""
        if not trigger.drop:
            self.pending[row] = (position, trigger)
            return
        outcome = self.outcomes[row]
        outcome.triggered, outcome.trigger_token = True, position
        outcome.p_true, outcome.dropped = trigger.p_true, True

    def rescore(self) -> Feed:
        """The feed re-scoring the triggered answers, each steered from its kept tokens on
        (the triggers recorded in the outcomes)."""
        rows = sorted(self.pending)
        for row in rows:
            position, trigger = self.pending[row]
            outcome = self.outcomes[row]
            if not outcome.triggered:
                outcome.triggered, outcome.trigger_token = True, position
            outcome.p_true, outcome.strength = trigger.p_true, trigger.strength
            start = trigger.keep if position is None else self.answer_offset + trigger.keep
            self.schedules[row].append((self.steer_from + start, trigger.strength))
        self.pending = {}
        again = any(self.trackings[row].active for row in rows)
        return Feed(self.policy, rows, [self.schedules[row] for row in rows], again)

    def rescored(
        self,
        feed: Feed,
        totals: Float[Tensor, " rows"],
        readings: Float[Tensor, "rows pos"] | None,
    ) -> None:
        """Take a re-scoring pass of :meth:`rescore`'s ``feed``: its answers' scores, and
        (when it tracked) the steered readings after each answer's segment start."""
        assert self.totals is not None
        self.totals = self.totals.clone()
        self.totals[feed.rows] = totals
        if readings is None:
            return
        for index, row in enumerate(feed.rows):
            tracking = self.trackings[row]
            if tracking.active:
                start = self.answer_offset + tracking.segment_start
                self._walk(row, tracking, readings[index], start)

    def _walk(self, row: int, tracking: Tracking, readings: Tensor, start: int) -> None:
        """Offer the readings at answer tokens ``start..length-1``; the first trigger is
        pending with the answer token it came at.

        The reading at answer token ``t`` counts as ``t - answer_offset`` tokens, so a
        trigger's kept tokens are counted from the offset too.
        """
        offset, length = self.answer_offset, self.lengths[row]
        for position in range(start, length):
            decision = tracking.observe(
                position - offset, float(readings[position]), ending=position == length - 1
            )
            if decision.trigger is not None:
                self._triggered(row, position, decision.trigger)
                return
