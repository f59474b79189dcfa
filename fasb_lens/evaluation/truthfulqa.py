"""The leak-free multiple-choice protocol: one decision per question, before any candidate.

Scoring candidates while tracking them lets a policy decide per candidate, so its
decisions can favour the true ones by what they say; this protocol decides once per
question, from the model's own unsteered answer, then scores every candidate alike.
"""

from __future__ import annotations

from fasb_lens.decisions import Policy, Unsteered, first_trigger
from fasb_lens.generation import GenerationTrace


def decide_once(policy: Policy, trace: GenerationTrace) -> Policy:
    """The leak-free multiple-choice protocol: one decision per question.

    ``policy`` (FASB) reads the model's own unsteered answer to the question (``trace``,
    generated with the policy's tracker) exactly as during generation; if it triggers,
    every candidate answer is then scored steered from its first token at the trigger's
    strength (the policy's :meth:`~fasb_lens.decisions.Policy.steady` form), else
    unsteered. The decision never sees the candidates, so it cannot favour the true ones.
    """
    found = first_trigger(policy, [step.p_true for step in trace.steps if step.kept])
    return Unsteered() if found is None else policy.steady(found[1].strength)
