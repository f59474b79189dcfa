"""FASB: track truthfulness, and when it drops, backtrack and steer at an adaptive strength.

Once ``backtrack_tokens`` (s) tokens exist since the sequence began or since the last
trigger (and at the sequence's end), check the reading; at the first check below
``threshold`` (beta), steer at ``alpha * (1 - p_true)``, keep all but the last s tokens
(none if there are no more than s) and regenerate from there with steering. The switches
give the paper's ablations and options beyond it; each switch combination is registered
under its own name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fasb_lens.decisions import (
    CONTINUE,
    PASSED,
    Check,
    Decision,
    Policy,
    Trigger,
    require_steering,
)
from fasb_lens.policies.base import PolicySettings, PolicySpec, StrengthSearch, register
from fasb_lens.policies.iti import ITI
from fasb_lens.trackers import tracker_names


@dataclass(frozen=True)
class FASB(Policy):
    """Flexible activation steering with backtracking, and its variants.

    Args:
        alpha, threshold, backtrack_tokens: the paper's alpha, beta and s.
        adaptive: strength ``alpha * (1 - p_true)``; ``False`` uses ``alpha`` ("w/o adaptive").
        backtrack: drop the last ``backtrack_tokens`` tokens on a trigger; ``False`` keeps
            them and steers from the next token on ("w/o backtracking").
        after_question: decide once, from the reading at the prompt's last token (the
            "after question" ablation, like CAST); a trigger steers the whole answer.
        max_backtracks: triggers allowed (the paper: 1). After a trigger, checking
            resumes once ``backtrack_tokens`` new tokens exist.
        tracker: the tracker read, ``"probe"`` (the authors') or ``"prototype"``.
        running_mean: trigger on the mean reading of the current segment instead of
            the latest one.
        detect_only: a trigger drops the sequence and steers nothing (the detector
            alone: in multiple choice the candidates it triggers on are left out), to
            measure how much of a gain is detection.
    """

    alpha: float = PolicySettings.alpha
    threshold: float = PolicySettings.threshold
    backtrack_tokens: int = PolicySettings.backtrack_tokens
    adaptive: bool = True
    backtrack: bool = True
    after_question: bool = False
    max_backtracks: int = 1
    tracker: str = PolicySettings.tracker
    running_mean: bool = False
    detect_only: bool = False

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.backtrack_tokens < 0 or self.max_backtracks < 1:
            raise ValueError("alpha and backtrack_tokens must be >= 0, max_backtracks >= 1")
        if self.tracker not in tracker_names():
            known = "', '".join(tracker_names())
            raise ValueError(f"tracker must be one of '{known}', got {self.tracker!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        if self.detect_only:
            return "detector_only"
        if self.after_question:
            return "after_question"
        if not self.backtrack:
            return "fasb_no_backtrack"
        return "fasb" if self.adaptive else "fasb_fixed_strength"

    def intervention(self, steering: Any) -> Any:
        return require_steering(self, steering)

    @property
    def decides(self) -> bool:
        return True

    def may_trigger(self, triggers: int) -> bool:
        return triggers < self.max_backtracks

    def steady(self, strength: float) -> Policy:
        return ITI(strength)

    def strength(self, p_true: float) -> float:
        """The steering strength for a trigger at ``p_true``."""
        return self.alpha * (1.0 - p_true) if self.adaptive else self.alpha

    def kept_tokens(self, n_tokens: int) -> int:
        """Tokens kept by a trigger when ``n_tokens`` exist."""
        if self.after_question:
            return 0
        if not self.backtrack:
            return n_tokens
        back = self.backtrack_tokens
        return n_tokens - back if n_tokens > back else 0

    def is_check(self, check: Check) -> bool:
        """Whether the reading is one FASB checks."""
        if not self.may_trigger(check.triggers):
            return False
        if self.after_question:
            return check.at_prompt_end
        return check.n_tokens - check.segment_start >= self.backtrack_tokens or check.ending

    def decide(self, check: Check) -> Decision:
        if not self.is_check(check):
            return CONTINUE
        value = check.segment_mean if self.running_mean else check.p_true
        if value >= self.threshold:
            return PASSED
        keep = self.kept_tokens(check.n_tokens)
        if self.detect_only:
            return Decision(checked=True, trigger=Trigger(0.0, keep, value, drop=True))
        return Decision(checked=True, trigger=Trigger(self.strength(value), keep, value))


FASB_GRIDS = {"mc": (2.0, 8.0, 32.0), "generation": (8.0, 16.0, 32.0)}
"""The strengths FASB's family starts its searches on, per task."""


def _variant(
    name: str,
    description: str,
    label: str,
    color: str,
    tasks: tuple[str, ...] = ("mc", "generation"),
    compared_with: tuple[str, ...] = ("fasb",),
    **switches: bool,
) -> None:
    """Register FASB with ``switches`` as ``name``. Every variant that steers has a
    strength search of its own (at FASB's threshold, with as many evaluations as FASB's,
    so that an ablation compares calibrated policies); ``detector_only`` steers nothing
    and takes FASB's threshold."""

    def build(settings: PolicySettings) -> FASB:
        return FASB(
            settings.alpha,
            settings.threshold,
            settings.backtrack_tokens,
            tracker=settings.tracker,
            **switches,
            **settings.options,
        )

    main, steers = name == "fasb", not switches.get("detect_only", False)
    register(
        PolicySpec(
            name=name,
            build=build,
            description=description,
            search=StrengthSearch(FASB_GRIDS, threshold=True) if steers else None,
            settings_from=None if steers else "fasb",
            tables=("truthfulqa", "datasets") if main else ("truthfulqa",),
            leak_free=main,
            compared_with=compared_with,
            label=label,
            color=color,
            tasks=tasks,
        )
    )


_variant(
    "fasb",
    "track p_true; at the first check below the threshold drop the last backtrack_tokens "
    "tokens and regenerate steered at alpha * (1 - p_true)",
    "FASB",
    "#1f5fbf",
    compared_with=("fixed", "detector_only"),
)
_variant(
    "fasb_fixed_strength",
    "the paper's 'w/o adaptive': FASB at strength alpha",
    "FASB w/o adaptive strength",
    "#0f8b8d",
    adaptive=False,
)
_variant(
    "fasb_no_backtrack",
    "the paper's 'w/o backtracking': keep the tokens, steer from the next one on",
    "FASB w/o backtracking",
    "#2e9e44",
    backtrack=False,
)
_variant(
    "after_question",
    "decide once from the question's last token (like CAST), steer the whole answer",
    "after the question (CAST-like)",
    "#c2185b",
    after_question=True,
)
_variant(
    "detector_only",
    "FASB's tracker and threshold without steering: a multiple-choice candidate it triggers "
    "on is left out (how much of FASB's gain is detection)",
    "detector only",
    "#8a6d3b",
    tasks=("mc",),
    compared_with=(),
    detect_only=True,
)
