"""Teacher-forced scoring: the log-likelihood of given continuations under a policy.

Multiple-choice evaluation asks how likely the model finds each candidate answer after
the same prompt. :class:`PrefixScorer` runs the prompt (instruction, primer, question)
once, keeps its KV cache, and scores the candidates on top of it as one token tree
(:class:`~fasb_lens.trees.TokenTree`: answers that begin alike share those tokens, and
nothing is padded); the score of an answer is the sum of its tokens' log-probabilities.

This module is the policies' second driver (the first is :mod:`fasb_lens.generation`).
It offers a policy the tracker's reading at the prompt's last token (counted as token
``-1``) and then at each answer token ``t`` (counted as ``t``: the authors'
multiple-choice convention, one token later than generation's count). For FASB
(DESIGN §2.6) this means: checks from the ``(s+1)``-th answer token on and at the last;
at the first reading below the threshold the answer is scored again with the vectors
added from ``s`` tokens before it, at strength ``alpha * (1 - p_true)``. A policy that
steers from the start (ITI, CAA) steers every answer position.

:func:`sequence_log_probs` is the one place a forward's logits become the summed
log-probability of a continuation; :func:`continuation_log_probs` scores
``(prefix, continuation)`` pairs with full forwards, the plain reference.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.interventions import Hooks, capture, final_residual, heads_from
from fasb_lens.models import (
    build_cache,
    cache_layers,
    cache_length,
    forward,
    model_device,
    pad,
    pad_token_id,
    tokenize,
)
from fasb_lens.policies import Intervention, Policy, Tracking, Trigger, Unsteered
from fasb_lens.prefix import SharedPrefix, prefill
from fasb_lens.steering import Steering
from fasb_lens.trees import TokenTree


def sequence_log_probs(
    logits: Float[Tensor, "batch pos vocab"],
    targets: Int[Tensor, "batch pos"],
    mask: Tensor | None = None,
) -> Float[Tensor, " batch"]:
    """Summed log-probability of ``targets`` where ``logits`` predict them.

    ``logits[:, t]`` predicts ``targets[:, t]``; ``mask`` (1 = counted) leaves out
    padding. The log-softmax is taken in float32.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets[..., None])[..., 0]
    if mask is not None:
        picked = picked * mask
    return picked.sum(dim=-1)


def continuation_log_probs(
    model: TransformerBridge,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    prepend_bos: bool | None = None,
) -> list[float]:
    """Summed log-probability of each continuation after its prefix, by full forwards.

    The plain way to score ``(prefix, continuation)`` pairs, one padded batch at a time;
    :class:`PrefixScorer` gets the same numbers faster when prefixes are shared.
    """
    device = model_device(model)
    prefixes = tokenize(model, [prefix for prefix, _ in pairs], prepend_bos=prepend_bos)
    continuations = tokenize(model, [cont for _, cont in pairs], prepend_bos=False)
    totals: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            rows = range(start, min(start + batch_size, len(pairs)))
            sequences = [prefixes[i] + continuations[i] for i in rows]
            ids, mask = pad(sequences, pad_id=pad_token_id(model), side="right", device=device)
            logits = forward(model, ids, mask)
            for row, i in enumerate(rows):
                begin, length = len(prefixes[i]), len(continuations[i])
                span = logits[row : row + 1, begin - 1 : begin - 1 + length]
                targets = torch.tensor([continuations[i]], device=device)
                totals.append(float(sequence_log_probs(span, targets)[0]))
    return totals


@dataclass
class AnswerScore:
    """The log-likelihood of one continuation and whether steering was triggered."""

    answer: str
    log_prob: float
    n_tokens: int
    triggered: bool = False
    trigger_token: int | None = None  # index of the answer token that triggered
    p_true: float | None = None  # the reading that decided (a trigger, or the prompt's)
    strength: float = 0.0


@dataclass
class _Pass:
    """One batch of answers fed as a token tree: each answer's summed log-probability,
    the anchored heads' captured ``hook_z`` at every node, ``nodes[a, t]``, the node
    that fed answer ``a``'s position ``t`` (0: the prompt's last token; 0 past its end),
    and (unsteered passes) the residual stream entering the lowest anchored layer."""

    totals: Tensor
    z: dict[int, Tensor]
    nodes: Int[Tensor, "answers pos"]
    resid: Float[Tensor, "nodes d_model"] | None = None


class PrefixScorer:
    """Scores continuations of one prefix under any policy, running the prefix once.

    The prefix but its last token runs once at construction and its KV cache is reused by
    every call; each batch of continuations is fed with the prefix's last token in front,
    so that the position predicting an answer's first token is part of the batch.

    ``answer_offset`` moves FASB's checks and its earliest steered position that many
    answer tokens later: 0 counts the reading at answer token ``t`` as ``t`` (checks from
    the ``(s+1)``-th token, as DESIGN §2.6 describes); the authors' TruthfulQA code uses 1
    (checks from the ``(s+2)``-th token, steering never before the second answer token,
    no check at all on a one-token answer). ``prefix_ids`` gives the prefix as token ids
    instead of text, and ``shared`` a :class:`~fasb_lens.decoding.SharedPrefix` the prefix
    begins with, which is then not recomputed. ``steer_prompt_end=False``
    (the default, as the authors' TruthfulQA evaluation does)
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
        prefix_ids: Sequence[int] | None = None,
        answer_offset: int = 0,
        shared: SharedPrefix | None = None,
    ) -> None:
        if answer_offset < 0:
            raise ValueError(f"answer_offset must be >= 0, got {answer_offset}")
        self.model = model
        self.steering = steering
        self.answer_offset = answer_offset
        self.prefix_ids = (
            list(prefix_ids)
            if prefix_ids is not None
            else tokenize(model, [prefix], prepend_bos=prepend_bos)[0]
        )
        if not self.prefix_ids:
            raise ValueError("the prefix is empty: nothing to score continuations after")
        self.device = model_device(model)
        self.answer_start = len(self.prefix_ids)
        self.steer_from = self.answer_start - 1 if steer_prompt_end else self.answer_start
        head = self.prefix_ids[:-1]
        self.cache = None
        if shared is not None and shared.starts(head):
            rest = torch.tensor([head[len(shared.ids) :]], device=self.device)
            self.cache = prefill(model, rest, *shared.extend(torch.ones_like(rest)))
        elif head:
            self.cache = prefill(model, torch.tensor([head], device=self.device))
        self._plain: dict[tuple[tuple[int, ...], ...], _Pass] = {}
        # the anchored heads at the prompt's last token, for decisions made there
        self._prefix = self._run([[]]) if steering is not None else None

    @property
    def prefix_p_true(self) -> float | None:
        """The probe tracker's reading at the prompt's last token (``None`` unsteered)."""
        if self._prefix is None:
            return None
        return float(self._tracker_readings("probe", self._prefix)[0, 0])

    # ----------------------------------------------------------------------- passes

    def _layers(self) -> list[int]:
        return sorted({head.layer for head in self.steering.heads}) if self.steering else []

    def with_steering(self, steering: Steering) -> PrefixScorer:
        """This scorer with a steering on a subset of its heads (fewer anchored heads),
        sharing the prompt's cache and the unsteered passes, which hold every head."""
        if self.steering is None or not set(steering.heads) <= set(self.steering.heads):
            raise ValueError("with_steering takes a steering on a subset of the scorer's heads")
        other = copy.copy(self)
        other.steering = steering
        other._layers = self._layers  # type: ignore[method-assign]
        return other

    def _run(
        self,
        cont_ids: list[list[int]],
        policy: Policy | None = None,
        schedules: list[list[tuple[int, float]]] | None = None,
        *,
        track: bool = True,
        base: tuple[_Pass, Sequence[int]] | None = None,
    ) -> _Pass:
        """Sum log-probs of each continuation (and the anchored heads' ``hook_z``).

        The answers run as one token tree (:class:`~fasb_lens.trees.TokenTree`) after the
        prompt's cache: the prompt's last token, then every distinct answer prefix once.
        With ``schedules`` (one per answer, see :meth:`_strengths`) ``policy`` steers, and
        answers share a node only where their strengths agree up to it. ``base`` is the
        unsteered pass of these answers (and each answer's row in it): below the lowest
        block the steering changes, a steered forward would recompute exactly that pass,
        so it starts from the residual stream the pass kept (:meth:`_start_layer`).
        """
        strengths = None
        if schedules is not None:
            strengths = [
                self._strengths(schedule, len(ids))
                for ids, schedule in zip(cont_ids, schedules, strict=True)
            ]
        tree = TokenTree.build(self.prefix_ids[-1], cont_ids, keys=strengths, leaves=track)
        prompt = cache_length(self.cache) if self.cache is not None else 0
        ids = torch.tensor([tree.tokens], device=self.device)
        positions = self.answer_start - 1 + torch.tensor([tree.depth], device=self.device)
        hooks: Hooks = []
        inputs, start, kept = ids, None, None
        if strengths is not None and policy is not None:
            at_node = torch.zeros(1, len(tree), device=self.device)
            for path, values in zip(tree.paths, strengths, strict=True):
                at_node[0, list(path)] = torch.tensor(values[: len(path)], device=self.device)
            intervention = policy.intervention(self.steering)
            hooks = intervention.hooks(at_node, positions=at_node != 0)
            start = self._start_layer(intervention, base)
            if start is not None and base is not None:
                inputs = self._residual_inputs(tree, *base)
        store: dict[int, Tensor] = {}
        captures = capture(self._layers(), store) if track else []
        if strengths is None and self._layers():
            kept = {}
            captures += capture([self._layers()[0]], kept, site="resid_pre")
        past = build_cache(cache_layers(self.cache)) if self.cache is not None else None
        with torch.inference_mode():
            final = final_residual(
                self.model,
                inputs,
                tree.attention(prompt).to(self.device),
                captures,
                hooks,
                past=past,
                start_at_layer=start,
                position_ids=positions,
            )[0]
            totals = tree.log_probs(self.model, final)
        width = max(len(path) for path in tree.paths) if tree.paths else 1
        nodes = torch.zeros(len(cont_ids), width, dtype=torch.long, device=self.device)
        for row, path in enumerate(tree.paths):
            nodes[row, : len(path)] = torch.tensor(path, dtype=torch.long)
        resid = next(iter(kept.values()))[0] if kept else None
        return _Pass(totals, store, nodes, resid)

    def _start_layer(
        self, intervention: Intervention, base: tuple[_Pass, Sequence[int]] | None
    ) -> int | None:
        """The block a steered forward starts at: the lowest anchored layer, whose input
        the unsteered pass ``base`` kept, when the intervention changes nothing below it
        (``None``: run every block)."""
        if base is None or base[0].resid is None:
            return None
        lowest = self._layers()[0]
        return lowest if lowest > 0 and intervention.first_layer >= lowest else None

    @staticmethod
    def _residual_inputs(
        tree: TokenTree, plain: _Pass, rows: Sequence[int]
    ) -> Float[Tensor, "1 nodes d_model"]:
        """Each node's residual stream entering the start layer, read from the unsteered
        pass ``plain`` at the node that fed the same tokens (answer ``rows[a]`` there)."""
        assert plain.resid is not None
        source = torch.zeros(len(tree), dtype=torch.long, device=plain.resid.device)
        for row, path in zip(rows, tree.paths, strict=True):
            source[list(path)] = plain.nodes[row, : len(path)]
        return plain.resid[source][None]

    def _strengths(self, schedule: list[tuple[int, float]], length: int) -> list[float]:
        """The steering strength at each fed position of an answer of ``length`` tokens
        (the prompt's last token, then its tokens) under ``schedule``: each step
        ``(start, strength)`` sets the strength from the absolute position ``start`` on."""
        first = self.answer_start - 1
        values = []
        for position in range(first, first + length + 1):
            total, previous = 0.0, 0.0
            for start, strength in schedule:
                if position >= start:
                    total += strength - previous
                previous = strength
            values.append(total)
        return values

    def _unsteered(self, cont_ids: list[list[int]]) -> _Pass:
        """The unsteered pass, computed once per set of answers: no steering and the
        tracking pass of every deciding policy share it."""
        key = tuple(tuple(ids) for ids in cont_ids)
        if key not in self._plain:
            self._plain[key] = self._run(cont_ids)
        return self._plain[key]

    def _base(
        self, cont_ids: list[list[int]], rows: Sequence[int]
    ) -> tuple[_Pass, Sequence[int]] | None:
        """The unsteered pass of ``cont_ids`` if it has run (a steered pass of the answers
        ``rows`` then starts from it), else ``None``: it is not run just for that."""
        plain = self._plain.get(tuple(tuple(ids) for ids in cont_ids))
        return None if plain is None else (plain, rows)

    def _tracker_readings(self, kind: str, run: _Pass) -> Tensor:
        """The tracker ``kind`` at every fed position of a pass: ``[batch, pos]``."""
        assert self.steering is not None
        tracker = self.steering.tracker(kind)
        return tracker.p_true(heads_from(run.z, tracker.heads).float())[0][run.nodes]

    def _readings(self, policy: Policy, run: _Pass) -> Tensor:
        return self._tracker_readings(policy.tracker, run)

    # ----------------------------------------------------------------------- scoring

    def score(
        self, continuations: Sequence[str], policy: Policy | None = None
    ) -> list[AnswerScore]:
        """Log-likelihood of each continuation (no BOS; e.g. ``" " + answer``)."""
        cont_ids = tokenize(self.model, list(continuations), prepend_bos=False)
        return self.score_ids(cont_ids, policy, texts=continuations)

    def readings(
        self, cont_ids: Sequence[Sequence[int]], tracker: str = "probe"
    ) -> list[list[float]]:
        """The tracker's unsteered readings for each continuation (token ids): at the
        prompt's last token, then at each of its tokens."""
        if self._prefix is None:
            raise ValueError("readings need a steering artifact (the anchored heads)")
        lists = [list(ids) for ids in cont_ids]
        prompt_end = float(self._tracker_readings(tracker, self._prefix)[0, 0])
        values = self._tracker_readings(tracker, self._unsteered(lists))
        return [
            [prompt_end, *values[row, 1 : len(ids) + 1].tolist()] for row, ids in enumerate(lists)
        ]

    def score_ids(
        self,
        cont_ids: Sequence[Sequence[int]],
        policy: Policy | None = None,
        *,
        texts: Sequence[str] | None = None,
    ) -> list[AnswerScore]:
        """:meth:`score` for continuations given as token ids."""
        policy = policy or Unsteered()
        cont_ids = [list(ids) for ids in cont_ids]
        if texts is None:
            texts = [self.model.tokenizer.decode(ids) for ids in cont_ids]
        continuations = list(texts)
        initial = float(policy.initial_strength())
        results = [
            AnswerScore(text, 0.0, len(ids), strength=initial)
            for text, ids in zip(continuations, cont_ids, strict=True)
        ]
        schedules: list[list[tuple[int, float]]] = [[] for _ in cont_ids]
        if initial:
            schedules = [[(self.steer_from, initial)] for _ in cont_ids]
            base = self._base(cont_ids, range(len(cont_ids)))
            first = self._run(cont_ids, policy, schedules, track=policy.decides, base=base)
        else:
            first = self._unsteered(cont_ids)
        totals = first.totals
        if policy.decides:
            if self._prefix is None:
                raise ValueError(f"the {policy.name} policy needs a steering artifact")
            totals = self._decide(policy, cont_ids, results, schedules, first)
        for result, total in zip(results, totals.tolist(), strict=True):
            result.log_prob = total
        return results

    def _decide(
        self,
        policy: Policy,
        cont_ids: list[list[int]],
        results: list[AnswerScore],
        schedules: list[list[tuple[int, float]]],
        first: _Pass,
    ) -> Tensor:
        """Walk each answer's readings through the policy; re-score the triggered ones."""
        assert self._prefix is not None
        prompt_end = float(self._readings(policy, self._prefix)[0, 0])
        trackings = [Tracking(policy) for _ in cont_ids]
        pending: dict[int, tuple[int | None, Trigger]] = {}
        for row, tracking in enumerate(trackings):
            decision = tracking.observe(-1, prompt_end, at_prompt_end=True)
            if decision.checked:
                results[row].p_true = prompt_end
            if decision.trigger is not None:
                pending[row] = (None, decision.trigger)
        readings = self._readings(policy, first)[:, 1:]  # at the answer tokens
        for row, tracking in enumerate(trackings):
            if row not in pending:
                found = self._walk(tracking, readings[row], len(cont_ids[row]))
                if found is not None:
                    pending[row] = found
        totals = first.totals
        while pending:
            rows = sorted(pending)
            for row in rows:
                position, trigger = pending[row]
                result = results[row]
                if not result.triggered:
                    result.triggered, result.trigger_token = True, position
                result.p_true, result.strength = trigger.p_true, trigger.strength
                start = trigger.keep if position is None else self.answer_offset + trigger.keep
                schedules[row].append((self.steer_from + start, trigger.strength))
            again = [row for row in rows if trackings[row].active]
            run = self._run(
                [cont_ids[row] for row in rows],
                policy,
                [schedules[row] for row in rows],
                track=bool(again),
                base=self._base(cont_ids, rows),
            )
            totals = totals.clone()
            totals[rows] = run.totals
            pending = {}
            if again:
                steered = self._readings(policy, run)[:, 1:]
                for index, row in enumerate(rows):
                    tracking = trackings[row]
                    if tracking.active:
                        found = self._walk(
                            tracking,
                            steered[index],
                            len(cont_ids[row]),
                            self.answer_offset + tracking.segment_start,
                        )
                        if found is not None:
                            pending[row] = found
        return totals

    def _walk(
        self, tracking: Tracking, readings: Tensor, length: int, start: int | None = None
    ) -> tuple[int, Trigger] | None:
        """Offer the readings at answer tokens ``start..length-1`` (from the answer offset
        on); return the first trigger and the answer token it came at.

        The reading at answer token ``t`` counts as ``t - answer_offset`` tokens, so a
        trigger's kept tokens are counted from the offset too.
        """
        offset = self.answer_offset
        for position in range(offset if start is None else start, length):
            decision = tracking.observe(
                position - offset, float(readings[position]), ending=position == length - 1
            )
            if decision.trigger is not None:
                return position, decision.trigger
        return None
