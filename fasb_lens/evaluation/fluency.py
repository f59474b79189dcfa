"""Fluency: how far a steering strength moves the model away from its own language.

A strength can win a validation objective by breaking the model: an answer that repeats
"Some. Some." is never false, and a candidate whose every token is pushed away scores
like a deleted one. The **fluency cost** of a strength is the mean next-token KL
divergence ``KL(unsteered || steered)``, in nats per token, over plain text: validation
questions followed by their best answers, steered at every answer position as a policy
steers an answer it writes. A calibration search chooses no strength whose cost exceeds
its budget (:data:`DEFAULT_MAX_KL`) and extends no grid past one, and the chosen
strength's cost is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.data import TruthfulQAQuestion
from fasb_lens.decisions import Intervention
from fasb_lens.interventions import hooked
from fasb_lens.models import forward, model_device, pad, pad_token_id, tokenize

DEFAULT_MAX_KL = 0.5
"""The fluency budget, in nats per token: a strength that moves the next-token
distributions further than this on plain answers is not chosen. Measured on the embedded
model (fold 0 of a 40-question run, every anchored head; ``docs/concepts/calibration.md``):
ITI answers stay sentences up to 0.3 nats and start repeating a phrase at 1.0
("I am a machine, I am a machine, ..."), and CAA stays fluent at 0.4 and breaks at 1.4."""

PROBE_QUESTIONS = 16
"""Validation questions (with their best answers) the cost is measured on."""

Cost = Callable[[float], float]
"""A family's fluency cost at a strength."""


def probe_text(question: TruthfulQAQuestion) -> tuple[str, str]:
    """The plain text a strength is measured on: the question, then its best answer."""
    return f"Q: {question.question}\nA:", f" {question.best_answer}"


@dataclass
class FluencyProbe:
    """The unsteered model's next-token distributions on a few answers, kept to measure
    any intervention's cost against (:meth:`cost`)."""

    model: TransformerBridge
    ids: Int[Tensor, "n pos"]
    attention: Int[Tensor, "n pos"]
    answer: Bool[Tensor, "n pos"]
    """The positions that predict an answer token: steered, and where the KL is read."""
    reference: Float[Tensor, "m vocab"] = field(repr=False)
    costs: dict[tuple[int, float], float] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        model: TransformerBridge,
        questions: Sequence[TruthfulQAQuestion],
        limit: int = PROBE_QUESTIONS,
    ) -> FluencyProbe:
        """The probe on the first ``limit`` of ``questions``."""
        return cls.on_texts(model, [probe_text(question) for question in questions[:limit]])

    @classmethod
    def on_texts(cls, model: TransformerBridge, texts: Sequence[tuple[str, str]]) -> FluencyProbe:
        """The probe on ``(prompt, answer)`` texts (a multiple-choice item's prompt and its
        right option, say), steered and read at the answer's positions."""
        if not texts:
            raise ValueError("the fluency probe needs at least one question")
        prompts = tokenize(model, [prompt for prompt, _ in texts])
        whole = tokenize(model, [prompt + answer for prompt, answer in texts])
        ids, attention = pad(whole, pad_id=pad_token_id(model), side="right")
        answer = torch.zeros_like(attention, dtype=torch.bool)
        for row, (head, full) in enumerate(zip(prompts, whole, strict=True)):
            answer[row, len(head) - 1 : len(full) - 1] = True
        device = model_device(model)
        ids, attention, answer = ids.to(device), attention.to(device), answer.to(device)
        probe = cls(model, ids, attention, answer, reference=torch.empty(0))
        probe.reference = probe._log_probs([])
        return probe

    def _log_probs(self, hooks: list) -> Float[Tensor, "m vocab"]:
        with torch.inference_mode(), hooked(self.model, hooks):
            logits = forward(self.model, self.ids, self.attention)
        return torch.log_softmax(logits[self.answer].float(), dim=-1)

    def cost(self, intervention: Intervention | None, strength: float) -> float:
        """Mean ``KL(unsteered || steered)`` per answer token, in nats, with
        ``intervention`` at ``strength`` on every answer position (0 without one)."""
        if intervention is None or strength == 0:
            return 0.0
        key = (id(intervention), round(float(strength), 9))
        if key not in self.costs:
            hooks = intervention.hooks(float(strength), positions=self.answer)
            steered = self._log_probs(hooks)
            kl = (self.reference.exp() * (self.reference - steered)).sum(-1)
            self.costs[key] = float(kl.mean())
        return self.costs[key]

    def family_costs(self, specs: Sequence[Any], settings: Any, steering: Any) -> dict[str, Cost]:
        """Each registered policy's (``specs``) family cost, built from ``settings``, on
        ``steering`` (its anchored heads)."""
        return {spec.name: self.family_cost(spec.build(settings), steering) for spec in specs}

    def family_cost(self, policy: Any, steering: Any) -> Cost:
        """The fluency cost of ``policy``'s family at a strength: its intervention on
        ``steering`` at that strength (for FASB, the most it steers with)."""
        intervention = policy.intervention(steering)
        return lambda strength: self.cost(intervention, strength)
