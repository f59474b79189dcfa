"""Scoring answers by log-likelihood under a steering policy, with a shared prefix cache.

Multiple-choice evaluation asks how likely the model finds each candidate answer after the
same prompt. :class:`PrefixScorer` runs the prompt (instruction, primer, question) once,
keeps its KV cache, and scores every candidate as one padded batch on top of it; the
score of an answer is the sum of its tokens' log-probabilities.

Under FASB (DESIGN §2.6) each answer is first scored without steering while the tracker
reads ``p_true`` at its tokens from the ``(s+1)``-th on (and at the last); at the first
token below the threshold the answer is scored again with the vector added at every
position from ``s`` tokens before that one, at strength ``alpha * (1 - p_true)``. ITI adds
the vector at every answer position, CAA its residual vector, and "after question"
decides once from the prompt's last token.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.generation import FASB, CAASteering, FixedSteering, NoSteering, Policy
from fasb_lens.models import forward, hook_z_name, model_device, pad, pad_token_id, tokenize
from fasb_lens.probes import Tracker
from fasb_lens.steering import Steering


@dataclass
class AnswerScore:
    """The log-likelihood of one continuation and whether steering was triggered."""

    answer: str
    log_prob: float
    n_tokens: int
    triggered: bool = False
    trigger_token: int | None = None  # index of the answer token that triggered
    p_true: float | None = None  # the reading that decided (trigger or the prefix's)
    strength: float = 0.0


def _capture(tracker: Tracker | None, store: dict[int, Tensor]) -> list[tuple[str, Callable]]:
    """Hooks keeping the anchored layers' whole ``hook_z`` (before any steering)."""
    if tracker is None:
        return []

    def keep(z: Tensor, hook: Any) -> Tensor:
        store[int(hook.name.split(".")[1])] = z
        return z

    return [(hook_z_name(layer), keep) for layer in sorted({h.layer for h in tracker.heads})]


def _readings(tracker: Tracker, store: dict[int, Tensor]) -> Tensor:
    """``p_true`` at every position of the last forward: ``[batch, pos]``."""
    z = torch.stack([store[head.layer][:, :, head.head] for head in tracker.heads], dim=2)
    return tracker.p_true(z.float())


class PrefixScorer:
    """Scores continuations of one prefix under any policy, running the prefix once.

    The prefix but its last token runs once at construction and its KV cache is reused by
    every call; each batch of continuations is fed with the prefix's last token in front,
    so that the position predicting an answer's first token is part of the batch.

    ``steer_prompt_end=False`` (the default, as the authors' TruthfulQA evaluation does)
    steers answer positions only, so an answer's first token, predicted from the prompt,
    is never affected by steering. ``True`` also steers the prompt's last position: needed
    when options are single tokens (SST-2's " positive" / " negative"), which would
    otherwise be scored identically under every policy.
    """

    def __init__(
        self,
        model: TransformerBridge,
        prefix: str,
        *,
        steering: Steering | None = None,
        prepend_bos: bool | None = None,
        steer_prompt_end: bool = False,
    ) -> None:
        self.model = model
        self.steering = steering
        self.prefix_ids = tokenize(model, [prefix], prepend_bos=prepend_bos)[0]
        self.device = model_device(model)
        self.tracker = steering.tracker("probe") if steering is not None else None
        self.answer_start = len(self.prefix_ids)
        self.steer_from = self.answer_start - 1 if steer_prompt_end else self.answer_start
        head = self.prefix_ids[:-1]
        self.cache = None
        if head:
            with torch.inference_mode():
                _, self.cache = forward(
                    model, torch.tensor([head], device=self.device), use_cache=True
                )
        self._plain: dict[tuple[tuple[int, ...], ...], tuple[Tensor, Tensor | None]] = {}
        self.prefix_p_true: float | None = None
        if self.tracker is not None:  # the tracker's reading at the prompt's last token
            _, readings = self._run([[]], [], self.tracker)
            assert readings is not None
            self.prefix_p_true = float(readings[0, 0])

    def _run(
        self,
        cont_ids: list[list[int]],
        hooks: list[tuple[str, Callable]],
        tracker: Tracker | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Sum log-probs of each continuation, and ``p_true`` at every fed position.

        Position 0 of the batch is the prefix's last token; position ``t + 1`` is the
        continuation's token ``t``, which position ``t`` predicts.
        """
        n = len(cont_ids)
        rows = [[self.prefix_ids[-1], *ids] for ids in cont_ids]
        ids, mask = pad(rows, pad_id=pad_token_id(self.model), side="right", device=self.device)
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(n)
            head = torch.ones(n, cache.get_seq_length(), dtype=mask.dtype, device=self.device)
            full_mask = torch.cat([head, mask], dim=1)
        else:
            full_mask = mask
        store: dict[int, Tensor] = {}
        with torch.inference_mode(), self.model.hooks(fwd_hooks=_capture(tracker, store) + hooks):
            if cache is None:
                logits = forward(self.model, ids, full_mask)
            else:
                logits, _ = forward(self.model, ids, full_mask, past_key_values=cache)
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = log_probs.gather(-1, ids[:, 1:, None])[..., 0]
        totals = (picked * mask[:, 1:]).sum(dim=1)
        readings = _readings(tracker, store) if tracker is not None else None
        return totals, readings

    def _unsteered(self, cont_ids: list[list[int]]) -> tuple[Tensor, Tensor | None]:
        """The unsteered pass (totals and readings), computed once per set of answers:
        no steering and the tracking pass of every FASB variant share it."""
        key = tuple(tuple(ids) for ids in cont_ids)
        if key not in self._plain:
            self._plain[key] = self._run(cont_ids, [], self.tracker)
        return self._plain[key]

    def score(
        self, continuations: Sequence[str], policy: Policy | None = None
    ) -> list[AnswerScore]:
        """Log-likelihood of each continuation (no BOS; e.g. ``" " + answer``)."""
        policy = policy or NoSteering()
        cont_ids = tokenize(self.model, list(continuations), prepend_bos=False)
        lengths = [len(ids) for ids in cont_ids]
        n = len(cont_ids)
        offset = self.answer_start - 1  # the absolute position of a batch's first token
        strengths = torch.zeros(n, device=self.device)

        def steered(
            rows_strength: Tensor, starts: Tensor | int, rows: list[int] | None = None
        ) -> Tensor:
            """Totals with steering, for ``rows`` of the answers (default: all)."""
            positions = starts if isinstance(starts, int) else starts.to(self.device)
            if isinstance(policy, CAASteering):
                hooks = policy.caa.hooks(rows_strength, positions=positions, offset=offset)
            else:
                assert self.steering is not None
                hooks = self.steering.hooks(rows_strength, positions=positions, offset=offset)
            chosen = cont_ids if rows is None else [cont_ids[i] for i in rows]
            return self._run(chosen, hooks, None)[0]

        results = [
            AnswerScore(text, 0.0, length)
            for text, length in zip(continuations, lengths, strict=True)
        ]
        if isinstance(policy, NoSteering):
            totals, _ = self._unsteered(cont_ids)
        elif isinstance(policy, FixedSteering | CAASteering):
            totals = steered(strengths + policy.alpha, self.steer_from)
            for result in results:
                result.strength = policy.alpha
        elif isinstance(policy, FASB) and policy.after_question:
            totals = self._after_question(policy, results, strengths, steered, cont_ids)
        elif isinstance(policy, FASB):
            totals = self._fasb(policy, results, cont_ids, steered)
        else:
            raise ValueError(f"unsupported policy {policy!r}")
        for result, total in zip(results, totals.tolist(), strict=True):
            result.log_prob = total
        return results

    def _after_question(self, policy: FASB, results, strengths, steered, cont_ids) -> Tensor:
        if self.prefix_p_true is None:
            raise ValueError("the after_question policy needs a steering artifact")
        p = self.prefix_p_true
        for result in results:
            result.p_true = p
        if p >= policy.threshold:
            return self._unsteered(cont_ids)[0]
        strength = policy.strength(p)
        for result in results:
            result.triggered, result.strength = True, strength
        return steered(strengths + strength, self.steer_from)

    def _fasb(self, policy: FASB, results, cont_ids, steered) -> Tensor:
        if self.tracker is None:
            raise ValueError(f"the {policy.name} policy needs a steering artifact")
        totals, readings = self._unsteered(cont_ids)
        assert readings is not None
        readings = readings[:, 1:]  # at the answer tokens
        back = policy.backtrack_tokens
        starts = torch.zeros(len(cont_ids), dtype=torch.long)
        strengths = torch.zeros(len(cont_ids))
        for row, (result, ids) in enumerate(zip(results, cont_ids, strict=True)):
            last = len(ids) - 1
            for position in range(min(back, last), last + 1):
                value = float(readings[row, position])
                if value < policy.threshold:
                    start = position - back if policy.backtrack else position
                    result.triggered, result.trigger_token = True, position
                    result.p_true, result.strength = value, policy.strength(value)
                    starts[row] = self.steer_from + max(start, 0)
                    strengths[row] = result.strength
                    break
        rows = [row for row, result in enumerate(results) if result.triggered]
        if not rows:
            return totals
        rescored = steered(strengths[rows].to(self.device), starts[rows], rows)
        totals = totals.clone()
        totals[rows] = rescored
        return totals


def mc_metrics(true_scores: Sequence[float], false_scores: Sequence[float]) -> dict[str, float]:
    """TruthfulQA's MC metrics from log-likelihoods of true and false answers.

    ``true_scores[0]`` is the best answer. MC1: it outscores every false answer. MC2: the
    normalised probability mass of the true answers. MC3: the fraction of true answers
    that outscore every false answer.
    """
    if not true_scores or not false_scores:
        raise ValueError("MC metrics need at least one true and one false answer")
    best_false = max(false_scores)
    true_logs = torch.tensor(true_scores, dtype=torch.float64)
    all_logs = torch.tensor([*true_scores, *false_scores], dtype=torch.float64)
    return {
        "mc1": float(true_scores[0] > best_false),
        "mc2": float((true_logs.logsumexp(0) - all_logs.logsumexp(0)).exp()),
        "mc3": sum(score > best_false for score in true_scores) / len(true_scores),
    }
