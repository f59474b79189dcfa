"""Steering policies, registered by name; see :mod:`fasb_lens.policies.base`.

``none`` (= ``baseline``), ``fixed`` (= ``iti``), ``fasb``, ``fasb_fixed_strength``,
``fasb_no_backtrack``, ``after_question``, ``caa``, and the controls ``fasb_random`` and
``fixed_random`` (the same policies along random directions of the same scale).
"""

# isort: off
# registration order is the order tables list the policies in
from fasb_lens.policies import none, iti, fasb, caa, controls  # noqa: F401

# isort: on
from fasb_lens.policies.base import (
    ALIASES,
    CONTINUE,
    PASSED,
    POLICIES,
    Check,
    Decision,
    Intervention,
    Policy,
    PolicySettings,
    PolicySpec,
    Tracking,
    Trigger,
    adjusted,
    make_policy,
    policy_names,
    policy_spec,
    register,
    resolve,
    setting,
    unregister,
)
from fasb_lens.policies.caa import CAA
from fasb_lens.policies.controls import RandomDirections, redraw
from fasb_lens.policies.fasb import FASB
from fasb_lens.policies.iti import ITI
from fasb_lens.policies.none import Unsteered

__all__ = [
    "ALIASES",
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
    "Tracking",
    "Trigger",
    "Unsteered",
    "adjusted",
    "make_policy",
    "policy_names",
    "policy_spec",
    "redraw",
    "register",
    "resolve",
    "setting",
    "unregister",
]
