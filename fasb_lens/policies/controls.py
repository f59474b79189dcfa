"""Controls: a steering policy with random directions of the same scale.

A method's gain can come from steering in a learnt direction, or from anything else the
protocol does (steering some answers and not others, pushing hard in any direction).
The control keeps everything - the tracker, its decisions, the strengths, each head's
scale - and replaces every direction with a seeded random unit vector; the share of a
gain that the real direction explains is then the gain minus the control's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from fasb_lens.decisions import Check, Decision, Policy, require_steering
from fasb_lens.policies.base import PolicySettings, PolicySpec, policy_spec, register


@dataclass(frozen=True)
class RandomDirections(Policy):
    """``base``, steering along ``seed``'s random directions instead of the learnt ones."""

    base: Policy
    seed: int = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.base.name}_random"

    @property
    def tracker(self) -> str:  # type: ignore[override]
        return self.base.tracker

    def initial_strength(self) -> float:
        return self.base.initial_strength()

    def intervention(self, steering: Any) -> Any:
        return require_steering(self, steering).randomized(self.seed)

    @property
    def decides(self) -> bool:
        return self.base.decides

    def may_trigger(self, triggers: int) -> bool:
        return self.base.may_trigger(triggers)

    def decide(self, check: Check) -> Decision:
        return self.base.decide(check)

    def steady(self, strength: float) -> Policy:
        return RandomDirections(self.base.steady(strength), self.seed)


PUSH_DRAWS = 16
"""Random direction sets :func:`push_report` averages over."""


def push_report(steering: Any, model: Any, draws: int = PUSH_DRAWS) -> dict[str, float]:
    """The learnt directions' push on the residual stream beside their random controls'
    (mean over the anchored heads of :meth:`~fasb_lens.steering.Steering.residual_push`;
    the control's also over ``draws`` seeds): at equal strength, does the control push as
    hard through ``W_O``?"""
    learnt = float(steering.residual_push(model).mean())
    random = sum(
        float(steering.randomized(draw_seed("push", draw)).residual_push(model).mean())
        for draw in range(draws)
    )
    return {"learnt": learnt, "random": random / draws, "draws": draws}


def draw_seed(*parts: Any) -> int:
    """A seed for one random draw, derived from what identifies it (a run's seed, the draw's
    number, a question): evaluating each question with its own draw averages a control
    over many directions at the cost of one."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def redraw(policy: Policy, *parts: Any) -> Policy:
    """``policy`` with the draw named by ``parts`` if it is a control; else unchanged."""
    if isinstance(policy, RandomDirections):
        return replace(policy, seed=draw_seed(*parts))
    return policy


def control(of: str, description: str) -> PolicySpec:
    """Register ``{of}_random``: the policy ``of``, built from the same settings, along
    random directions of the same scale (drawn from the settings' ``seed``)."""

    def build(settings: PolicySettings) -> RandomDirections:
        return RandomDirections(policy_spec(of).build(settings), settings.seed)

    tables = policy_spec(of).tables
    return register(
        PolicySpec(
            name=f"{of}_random",
            build=build,
            description=description,
            settings_from=policy_spec(of).calibrated_as,
            control_of=of,
            tables=tables,
            leak_free=policy_spec(of).leak_free,
        )
    )


control("fasb", "control: FASB's decisions and strengths, random directions of the same scale")
control("fixed", "control: ITI's strength along random directions of the same scale")
