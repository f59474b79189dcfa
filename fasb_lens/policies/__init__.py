"""Steering policies, each registered once with what experiments need to know of it.

``none`` (= ``baseline``), ``fixed`` (= ``iti``), ``caa``, ``fasb``,
``fasb_fixed_strength``, ``fasb_no_backtrack``, ``after_question``, and the controls
``fasb_random`` and ``fixed_random`` (the same policies along random directions of the
same scale). The decision engine they run on is :mod:`fasb_lens.decisions`; the registry
and the settings are :mod:`fasb_lens.policies.base`. A new policy is one module with its
class and one ``register(PolicySpec(...))`` call, imported below.
"""

# isort: off
# registration order is the order tables list the policies in
from fasb_lens.policies import none, iti, caa, fasb, controls  # noqa: F401

# isort: on
from fasb_lens.decisions import (
    CONTINUE,
    PASSED,
    Check,
    Decision,
    Intervention,
    Policy,
    Tracking,
    Trigger,
    Unsteered,
    require_steering,
)
from fasb_lens.policies.base import (
    POLICIES,
    PolicySettings,
    PolicySpec,
    StrengthSearch,
    adjusted,
    make_policy,
    parse_strength,
    policy_names,
    policy_spec,
    register,
    resolve,
    searched,
    setting,
    strengths_option,
    uncalibrated_strength,
    unregister,
)
from fasb_lens.policies.caa import CAA
from fasb_lens.policies.controls import (
    RandomDirections,
    control,
    draw_seed,
    push_report,
    redraw,
)
from fasb_lens.policies.fasb import FASB
from fasb_lens.policies.iti import ITI

__all__ = [
    "CAA",
    "CONTINUE",
    "FASB",
    "ITI",
    "PASSED",
    "POLICIES",
    "Check",
    "Decision",
    "Intervention",
    "Policy",
    "PolicySettings",
    "PolicySpec",
    "RandomDirections",
    "StrengthSearch",
    "Tracking",
    "Trigger",
    "Unsteered",
    "adjusted",
    "control",
    "draw_seed",
    "make_policy",
    "parse_strength",
    "policy_names",
    "policy_spec",
    "push_report",
    "redraw",
    "register",
    "require_steering",
    "resolve",
    "searched",
    "setting",
    "strengths_option",
    "uncalibrated_strength",
    "unregister",
]
