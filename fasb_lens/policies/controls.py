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

from fasb_lens.policies.base import (
    Check,
    Decision,
    Policy,
    PolicySettings,
    PolicySpec,
    register,
    require_steering,
)
from fasb_lens.policies.fasb import FASB
from fasb_lens.policies.iti import ITI


@dataclass(frozen=True)
class RandomDirections(Policy):
    """``base``, steering along ``seed``'s random directions instead of the learnt ones."""

    base: Policy
    seed: int = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.base.name}_random"

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.base.family

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


def _fasb_random(settings: PolicySettings) -> RandomDirections:
    options = dict(settings.options)
    seed = int(options.pop("seed", 0))
    base = FASB(settings.alpha, settings.threshold, settings.backtrack_tokens, **options)
    return RandomDirections(base, seed)


def _fixed_random(settings: PolicySettings) -> RandomDirections:
    return RandomDirections(ITI(settings.alpha), int(settings.options.get("seed", 0)))


register(
    PolicySpec(
        name="fasb_random",
        build=_fasb_random,
        description="control: FASB's decisions and strengths, random directions of the same scale",
        family="fasb",
    )
)
register(
    PolicySpec(
        name="fixed_random",
        build=_fixed_random,
        description="control: ITI's strength along random directions of the same scale",
        family="fixed",
    )
)
