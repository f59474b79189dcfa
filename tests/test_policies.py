"""The decision engine: FASB's arithmetic, the tracking state, the registry, a new policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fasb_lens.decisions import first_check, first_trigger
from fasb_lens.generation import GenerationConfig, generate
from fasb_lens.policies import (
    CAA,
    CONTINUE,
    FASB,
    ITI,
    PASSED,
    POLICIES,
    Check,
    Decision,
    Policy,
    PolicySpec,
    Tracking,
    Trigger,
    Unsteered,
    make_policy,
    policy_names,
    policy_spec,
    register,
    require_steering,
    resolve,
    searched,
    unregister,
)
from fasb_lens.scoring import PrefixScorer


def check(n: int, p: float, **kwargs: Any) -> Check:
    return Check(n_tokens=n, p_true=p, segment_mean=kwargs.pop("mean", p), **kwargs)


def test_fasb_checks_once_backtrack_tokens_exist_and_at_the_end() -> None:
    policy = FASB(alpha=10.0, threshold=0.5, backtrack_tokens=3)
    assert policy.decide(check(2, 0.1)) == CONTINUE  # too early: not a check
    assert policy.decide(check(2, 0.9, ending=True)) == PASSED  # the end is always checked
    assert policy.decide(check(3, 0.9)) == PASSED
    decision = policy.decide(check(5, 0.2))
    assert decision.trigger == Trigger(strength=pytest.approx(8.0), keep=2, p_true=0.2)
    # no more than backtrack_tokens tokens: everything is dropped
    assert policy.decide(check(3, 0.2)).trigger.keep == 0
    # after a trigger, checks restart backtrack_tokens tokens after the kept ones
    assert policy.decide(check(4, 0.2, triggers=1, segment_start=2)) == CONTINUE
    assert (
        FASB(backtrack_tokens=3, max_backtracks=2).decide(
            check(4, 0.2, triggers=1, segment_start=2)
        )
        == CONTINUE
    )
    assert FASB(backtrack_tokens=3, max_backtracks=2).decide(
        check(5, 0.2, triggers=1, segment_start=2)
    ).trigger == Trigger(pytest.approx(48.0), 2, 0.2)


def test_fasb_variants_change_one_thing_each() -> None:
    reading = check(7, 0.25)
    assert make_policy("fasb", alpha=4.0, threshold=0.5, backtrack_tokens=3).decide(
        reading
    ).trigger == Trigger(3.0, 4, 0.25)
    fixed = make_policy("fasb_fixed_strength", alpha=4.0, threshold=0.5, backtrack_tokens=3)
    assert fixed.decide(reading).trigger == Trigger(4.0, 4, 0.25)
    kept = make_policy("fasb_no_backtrack", alpha=4.0, threshold=0.5, backtrack_tokens=3)
    assert kept.decide(reading).trigger == Trigger(3.0, 7, 0.25)
    after = make_policy("after_question", alpha=4.0, threshold=0.5, backtrack_tokens=3)
    assert after.decide(reading) == CONTINUE  # decides only at the prompt's end
    assert after.decide(check(1, 0.25, at_prompt_end=True)).trigger == Trigger(3.0, 0, 0.25)
    assert after.decide(check(1, 0.75, at_prompt_end=True)) == PASSED
    mean = FASB(alpha=4.0, threshold=0.5, backtrack_tokens=3, running_mean=True)
    assert mean.decide(check(7, 0.25, mean=0.6)) == PASSED
    assert mean.decide(check(7, 0.9, mean=0.4)).trigger == Trigger(pytest.approx(2.4), 4, 0.4)


def test_tracking_keeps_segments_and_counts_triggers() -> None:
    tracking = Tracking(FASB(alpha=1.0, threshold=0.5, backtrack_tokens=2, running_mean=True))
    assert tracking.observe(1, 0.9) == CONTINUE
    assert tracking.observe(2, 0.9) == PASSED
    decision = tracking.observe(3, 0.0)  # segment mean (0.9 + 0.9 + 0) / 3 = 0.6 passes
    assert decision == PASSED
    decision = tracking.observe(4, 0.0)  # (0.9 + 0.9 + 0 + 0) / 4 = 0.45 triggers
    assert decision.trigger == Trigger(pytest.approx(0.55), 2, pytest.approx(0.45))
    assert (tracking.triggers, tracking.segment_start, tracking.segment) == (1, 2, [])
    assert not tracking.active  # one backtrack allowed
    assert tracking.observe(9, 0.0) == CONTINUE
    assert Tracking(Unsteered()).observe(5, 0.1, ending=True) == CONTINUE
    assert Tracking(FASB()).observe(5, None, ending=True) == CONTINUE


def test_walking_readings_counts_them_as_generation_does() -> None:
    policy = FASB(alpha=10.0, threshold=0.5, backtrack_tokens=2)
    readings = [0.9, 0.8, 0.7, 0.3, 0.2]
    walked = list(Tracking(policy).walk(readings))
    assert [d.checked for _, d in walked[:3]] == [False, True, True]  # from 2 tokens on
    assert first_check(policy, readings) == 1
    index, trigger = first_trigger(policy, readings)
    assert (index, trigger) == (3, Trigger(pytest.approx(7.0), 2, 0.3))
    assert first_trigger(policy, [0.9, 0.9]) is None
    # scoring's count: readings from answer token 0 on, the first counted as 0 tokens
    assert first_check(policy, readings, first_count=0, from_prompt_end=False) == 2


def test_registry_names_match_the_policies() -> None:
    assert policy_names()[:2] == ("none", "fixed")
    for name in policy_names():
        spec = policy_spec(name)
        settings: dict[str, Any] = {"caa": object()} if "caa" in spec.needs else {}
        policy = make_policy(name, alpha=2.0, **settings)
        assert policy.name == name and spec.description
        source = spec.calibrated_as
        assert source is None or policy_spec(source).search is not None
        if spec.control_of:
            assert policy_spec(spec.control_of).calibrated_as == source
    variants = ["fasb_fixed_strength", "fasb_no_backtrack", "after_question"]
    # thresholded first: FASB and each variant that steers searched on its own
    assert [spec.name for spec in searched()] == ["fasb", *variants, "fixed", "caa"]
    assert policy_names("datasets") == ("none", "fixed", "fasb", "fasb_random", "fixed_random")
    assert POLICIES.aliases == {"baseline": "none", "iti": "fixed"}
    assert resolve("iti") == "fixed" and isinstance(make_policy("baseline"), Unsteered)
    assert isinstance(make_policy("iti", alpha=3.0), ITI)
    with pytest.raises(ValueError, match="unknown policy 'magic'"):
        make_policy("magic")
    with pytest.raises(ValueError, match="needs a CAA vector"):
        make_policy("caa")
    with pytest.raises(ValueError, match="already registered"):
        register(policy_spec("fasb"))
    assert make_policy("fasb", tracker="prototype", max_backtracks=2).tracker == "prototype"
    with pytest.raises(ValueError, match="tracker must be one of"):
        FASB(tracker="crystal-ball")
    with pytest.raises(ValueError, match="needs a steering artifact"):
        require_steering(FASB(), None)
    assert CAA(object(), 1.0).initial_strength() == 1.0 and ITI(2.0).initial_strength() == 2.0


@dataclass(frozen=True)
class SteerFromTheStart(Policy):
    """A toy policy, written as a user would: steer from the first reading below 0.99
    without dropping anything, at a fixed strength."""

    alpha: float = 3.0
    name: str = "steer_from_start"

    @property
    def decides(self) -> bool:
        return True

    def may_trigger(self, triggers: int) -> bool:
        return triggers < 1

    def intervention(self, steering: Any) -> Any:
        return require_steering(self, steering)

    def decide(self, check: Check) -> Decision:
        if check.triggers or check.at_prompt_end:
            return CONTINUE
        if check.p_true >= 0.99:
            return PASSED
        return Decision(True, Trigger(self.alpha, check.n_tokens, check.p_true))


def test_a_new_policy_is_one_class_and_one_registration(tiny_llama, tiny_anchoring) -> None:
    spec = PolicySpec(
        name="steer_from_start",
        build=lambda settings: SteerFromTheStart(settings.alpha),
        description="steer from the first low reading on, keeping every token",
    )
    register(spec)
    try:
        policy = make_policy("steer_from_start", alpha=5.0)
        steering = tiny_anchoring.steering
        config = GenerationConfig(max_new_tokens=5, stop_at_eos=False)
        trace = generate(
            tiny_llama, ["The quick brown"], policy=policy, steering=steering, config=config
        )[0]
        assert trace.policy == "steer_from_start" and trace.trigger_step == 1
        assert trace.backtracks[0]["kept_tokens"] == 2 and not trace.discarded_ids
        scorer = PrefixScorer(tiny_llama, "Q: Is the sky blue? A:", steering=steering)
        scored = scorer.score([" Yes, it is blue.", " No."], policy)
        assert all(score.triggered and score.strength == 5.0 for score in scored)
        assert [score.trigger_token for score in scored] == [0, 0]
    finally:
        unregister("steer_from_start")
    assert "steer_from_start" not in policy_names()
