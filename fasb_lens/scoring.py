"""Teacher-forced scoring: the log-likelihood of given continuations under a policy.

Multiple-choice evaluation asks how likely the model finds each candidate answer after
the same prompt. :class:`PrefixScorer` runs the prompt (instruction, primer, question)
once, keeps its KV cache, and scores the candidates on top of it as one token tree
(:class:`~fasb_lens.trees.TokenTree`: answers that begin alike share those tokens, and
nothing is padded); the score of an answer is the sum of its tokens' log-probabilities.
Several policies are scored together (:meth:`PrefixScorer.score_policies`): each round of
their passes is one forward, and a steered pass starts at the lowest anchored block from
the residual stream the unsteered pass kept there. Several questions are scored together
(:func:`score_together`): their rounds run in lockstep, each question's tree a row of the
same forward after its own prompt cache.

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
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.decisions import Anchored, Intervention, Policy, Tracking, Trigger, Unsteered
from fasb_lens.interventions import capture, final_residual, heads_from
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
from fasb_lens.prefix import SharedPrefix, prefill
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


@dataclass
class _Feed:
    """What one policy feeds in a steered pass: answers ``rows``, each with its steering
    schedule (see :meth:`PrefixScorer._strengths`); ``track`` keeps the anchored heads'
    activations for later readings."""

    policy: Policy
    rows: list[int]
    schedules: list[list[tuple[int, float]]]
    track: bool


@dataclass
class _Scoring:
    """One policy's scores while its passes run: each answer's result, steering schedule
    and decision state, the summed log-probabilities so far, and the answers waiting to
    be re-scored (``row: (answer token of the trigger or None at the prompt, trigger)``)."""

    policy: Policy
    initial: float
    results: list[AnswerScore]
    schedules: list[list[tuple[int, float]]]
    trackings: list[Tracking]
    totals: Tensor | None = None
    pending: dict[int, tuple[int | None, Trigger]] = field(default_factory=dict)

    @classmethod
    def begin(
        cls, policy: Policy, texts: list[str], cont_ids: list[list[int]], steer_from: int
    ) -> _Scoring:
        """A policy's state before any pass: a policy with an initial strength steers
        every answer from ``steer_from`` on."""
        initial = float(policy.initial_strength())
        return cls(
            policy,
            initial,
            [
                AnswerScore(text, 0.0, len(ids), strength=initial)
                for text, ids in zip(texts, cont_ids, strict=True)
            ],
            [[(steer_from, initial)] if initial else [] for _ in cont_ids],
            [Tracking(policy) for _ in cont_ids],
        )


T = TypeVar("T")


@dataclass
class _Request:
    """One question's share of a forward: ``tree`` fed after its scorer's prompt cache,
    from block ``start`` (``inputs``: the nodes' token ids ``[nodes]``, or the residual
    stream entering that block ``[nodes, d_model]``), with each intervention's strength
    at every node (``steer``); ``keep_resid`` keeps the residual stream entering the
    lowest anchored block (steered passes start from it)."""

    scorer: PrefixScorer
    tree: TokenTree
    inputs: Tensor
    start: int | None = None
    steer: list[tuple[Intervention, Tensor]] = field(default_factory=list)
    keep_resid: bool = False


@dataclass
class _Output:
    """What a forward gives one request: the final residual stream at its nodes, the
    anchored heads' ``hook_z`` (``layer -> [1, nodes, n_heads, d_head]``) and the kept
    residual stream (``[nodes, d_model]``, or ``None``)."""

    final: Float[Tensor, "nodes d_model"]
    z: dict[int, Tensor]
    resid: Tensor | None


Steps = Generator[list[_Request], list[_Output], T]
"""A scorer's work as a generator: it yields the forwards it needs next (all at once,
so they can join other questions' forwards) and is sent their outputs, in order."""


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
        steering: Anchored | None = None,
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
        self._prefix: _Pass | None = None  # run on first use, with other questions' passes

    @property
    def prompt_length(self) -> int:
        """Positions held by the prompt's cache (the prompt but its last token)."""
        return cache_length(self.cache) if self.cache is not None else 0

    @property
    def prefix_p_true(self) -> float | None:
        """The probe tracker's reading at the prompt's last token (``None`` unsteered)."""
        return None if self.steering is None else self._prompt_end("probe")

    def _prompt_end(self, tracker: str) -> float:
        """The tracker's reading at the prompt's last token (its pass run if need be)."""
        prefix = _alone(self.model, self._prefix_steps())
        return float(self._tracker_readings(tracker, prefix)[0, 0])

    # ----------------------------------------------------------------------- passes

    def _layers(self) -> list[int]:
        return sorted({head.layer for head in self.steering.heads}) if self.steering else []

    def with_steering(self, steering: Anchored) -> PrefixScorer:
        """This scorer with a steering on a subset of its heads (fewer anchored heads),
        sharing the prompt's cache and the unsteered passes, which hold every head."""
        if self.steering is None or not set(steering.heads) <= set(self.steering.heads):
            raise ValueError("with_steering takes a steering on a subset of the scorer's heads")
        other = copy.copy(self)
        other.steering = steering
        other._layers = self._layers  # type: ignore[method-assign]
        return other

    def _prefix_steps(self) -> Steps[_Pass]:
        """The anchored heads at the prompt's last token, for decisions made there (run
        once)."""
        if self._prefix is None:
            self._prefix = yield from self._run_steps([[]])
        return self._prefix

    def _run_steps(self, cont_ids: list[list[int]]) -> Steps[_Pass]:
        """The unsteered pass: each continuation's summed log-probability, the anchored
        heads' ``hook_z`` at every node and the residual stream entering the lowest
        anchored block (steered passes start there, :meth:`_feeds_steps`)."""
        tree = TokenTree.build(self.prefix_ids[-1], cont_ids, leaves=True)
        ids = torch.tensor(tree.tokens, device=self.device)
        (out,) = yield [_Request(self, tree, ids, keep_resid=bool(self._layers()))]
        return _Pass(tree.log_probs(self.model, out.final), out.z, self._nodes(tree), out.resid)

    def _feeds_steps(self, cont_ids: list[list[int]], feeds: Sequence[_Feed]) -> Steps[list[_Pass]]:
        """Every feed's steered pass (one per feed, in order), in as few forwards as the
        starting blocks allow.

        The feeds' answers run as one token tree whose nodes are keyed by each position's
        intervention and strength, so answers of different policies share a node only
        where the same steering (or none) reached it; each intervention's hooks act at its
        own nodes. When the question's unsteered pass has run, a forward whose
        interventions change nothing below the lowest anchored block starts there from the
        residual stream that pass kept (:meth:`_start_layer`).
        """
        interventions = [feed.policy.intervention(self.steering) for feed in feeds]
        plain = self._plain.get(tuple(tuple(ids) for ids in cont_ids))
        parts: dict[int | None, list[int]] = {}
        for index, intervention in enumerate(interventions):
            parts.setdefault(self._start_layer(intervention, plain), []).append(index)
        requests, finishes = [], []
        for start, indices in parts.items():
            request, finish = self._steered(
                [interventions[i] for i in indices],
                [feeds[i] for i in indices],
                cont_ids,
                start,
                plain,
            )
            requests.append(request)
            finishes.append(finish)
        outputs = yield requests
        passes: dict[int, _Pass] = {}
        for indices, finish, out in zip(parts.values(), finishes, outputs, strict=True):
            passes.update(zip(indices, finish(out), strict=True))
        return [passes[index] for index in range(len(feeds))]

    def _steered(
        self,
        interventions: list[Intervention],
        feeds: list[_Feed],
        cont_ids: list[list[int]],
        start: int | None,
        plain: _Pass | None,
    ) -> tuple[_Request, Callable[[_Output], list[_Pass]]]:
        """The forward of ``feeds`` (see :meth:`_feeds_steps`) from block ``start``, fed
        there the residual stream the unsteered pass ``plain`` kept (``None``: every
        block, from the tokens), and how its output becomes each feed's pass."""
        distinct: list[Intervention] = []
        answers, strengths, groups, rows = [], [], [], []
        for intervention, feed in zip(interventions, feeds, strict=True):
            group = _slot(distinct, intervention)
            for row, schedule in zip(feed.rows, feed.schedules, strict=True):
                answers.append(cont_ids[row])
                strengths.append(self._strengths(schedule, len(cont_ids[row])))
                groups.append(group)
                rows.append(row)
        keys = [
            [(group, value) if value else 0.0 for value in values]
            for group, values in zip(groups, strengths, strict=True)
        ]
        track = any(feed.track for feed in feeds)
        tree = TokenTree.build(self.prefix_ids[-1], answers, keys=keys, leaves=track)
        at_node = torch.zeros(len(distinct), len(tree), device=self.device)
        for path, values, group in zip(tree.paths, strengths, groups, strict=True):
            at_node[group, list(path)] = torch.tensor(values[: len(path)], device=self.device)
        if start is None or plain is None:
            inputs = torch.tensor(tree.tokens, device=self.device)
        else:
            inputs = self._residual_inputs(tree, plain, rows)
        request = _Request(self, tree, inputs, start, list(zip(distinct, at_node, strict=True)))

        def finish(out: _Output) -> list[_Pass]:
            totals, nodes = tree.log_probs(self.model, out.final), self._nodes(tree)
            store = out.z if track else {}
            passes, begin = [], 0
            for feed in feeds:
                end = begin + len(feed.rows)
                passes.append(_Pass(totals[begin:end], store, nodes[begin:end]))
                begin = end
            return passes

        return request, finish

    def _nodes(self, tree: TokenTree) -> Int[Tensor, "answers pos"]:
        """``[answers, pos]``: the node that fed each answer's each position (0 after)."""
        width = max(len(path) for path in tree.paths) if tree.paths else 1
        nodes = torch.zeros(len(tree.paths), width, dtype=torch.long, device=self.device)
        for row, path in enumerate(tree.paths):
            nodes[row, : len(path)] = torch.tensor(path, dtype=torch.long)
        return nodes

    def _start_layer(self, intervention: Intervention, plain: _Pass | None) -> int | None:
        """The block a steered forward starts at: the lowest anchored layer, whose input
        the unsteered pass ``plain`` kept, when the intervention changes nothing below it
        (``None``: run every block)."""
        if plain is None or plain.resid is None:
            return None
        lowest = self._layers()[0]
        return lowest if lowest > 0 and intervention.first_layer >= lowest else None

    @staticmethod
    def _residual_inputs(
        tree: TokenTree, plain: _Pass, rows: Sequence[int]
    ) -> Float[Tensor, "nodes d_model"]:
        """Each node's residual stream entering the start layer, read from the unsteered
        pass ``plain`` at the node that fed the same tokens (answer ``rows[a]`` there)."""
        assert plain.resid is not None
        source = torch.zeros(len(tree), dtype=torch.long, device=plain.resid.device)
        for row, path in zip(rows, tree.paths, strict=True):
            source[list(path)] = plain.nodes[row, : len(path)]
        return plain.resid[source]

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

    def _unsteered_steps(self, cont_ids: list[list[int]]) -> Steps[_Pass]:
        """The unsteered pass, computed once per set of answers: no steering and the
        tracking pass of every deciding policy share it, and steered passes start from it."""
        key = tuple(tuple(ids) for ids in cont_ids)
        if key not in self._plain:
            self._plain[key] = yield from self._run_steps(cont_ids)
        return self._plain[key]

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
        if self.steering is None:
            raise ValueError("readings need a steering artifact (the anchored heads)")
        lists = [list(ids) for ids in cont_ids]
        prompt_end = self._prompt_end(tracker)
        values = self._tracker_readings(tracker, _alone(self.model, self._unsteered_steps(lists)))
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
        return self.score_policies(cont_ids, [policy or Unsteered()], texts=texts)[0]

    def score_policies(
        self,
        cont_ids: Sequence[Sequence[int]],
        policies: Sequence[Policy],
        *,
        texts: Sequence[str] | None = None,
    ) -> list[list[AnswerScore]]:
        """:meth:`score_ids` under several policies at once (one list per policy).

        The policies advance together: their passes steered from the start run as one
        forward, then each round of re-scoring triggered answers runs as one forward for
        every policy that has any; the scores are each policy's alone. Several questions
        run together with :func:`score_together`.
        """
        return _alone(self.model, self._score_steps(cont_ids, policies, texts))

    def _score_steps(
        self,
        cont_ids: Sequence[Sequence[int]],
        policies: Sequence[Policy],
        texts: Sequence[str] | None,
    ) -> Steps[list[list[AnswerScore]]]:
        """:meth:`score_policies` as steps (see :data:`Steps`)."""
        cont_ids = [list(ids) for ids in cont_ids]
        if texts is None:
            texts = [self.model.tokenizer.decode(ids) for ids in cont_ids]
        states = [
            _Scoring.begin(policy, list(texts), cont_ids, self.steer_from) for policy in policies
        ]
        deciding = [state.policy for state in states if state.policy.decides]
        if deciding and self.steering is None:
            raise ValueError(f"the {deciding[0].name} policy needs a steering artifact")
        prefix = (yield from self._prefix_steps()) if deciding else None
        if any(not state.initial for state in states):
            plain = yield from self._unsteered_steps(cont_ids)
            for state in states:
                if not state.initial:
                    state.totals = plain.totals
                    if state.policy.decides:
                        self._first_decisions(state, prefix, plain)
        if steered := [state for state in states if state.initial]:
            every = list(range(len(cont_ids)))
            feeds = [
                _Feed(state.policy, every, state.schedules, state.policy.decides)
                for state in steered
            ]
            runs = yield from self._feeds_steps(cont_ids, feeds)
            for state, run in zip(steered, runs, strict=True):
                state.totals = run.totals
                if state.policy.decides:
                    self._first_decisions(state, prefix, run)
        while active := [state for state in states if state.pending]:
            feeds = [self._rescore(state) for state in active]
            runs = yield from self._feeds_steps(cont_ids, feeds)
            for state, feed, run in zip(active, feeds, runs, strict=True):
                state.totals = state.totals.clone()
                state.totals[feed.rows] = run.totals
                if feed.track:
                    self._walk_steered(state, feed.rows, run)
        for state in states:
            for result, total in zip(state.results, state.totals.tolist(), strict=True):
                result.log_prob = total
        return [state.results for state in states]

    def _first_decisions(self, state: _Scoring, prefix: _Pass | None, first: _Pass) -> None:
        """The policy's decisions at the prompt's end (``prefix``: its pass) and along each
        answer's first pass."""
        assert prefix is not None
        policy = state.policy
        prompt_end = float(self._readings(policy, prefix)[0, 0])
        for row, tracking in enumerate(state.trackings):
            decision = tracking.observe(-1, prompt_end, at_prompt_end=True)
            if decision.checked:
                state.results[row].p_true = prompt_end
            if decision.trigger is not None:
                state.pending[row] = (None, decision.trigger)
        readings = self._readings(policy, first)[:, 1:]  # at the answer tokens
        for row, tracking in enumerate(state.trackings):
            if row not in state.pending:
                found = self._walk(tracking, readings[row], state.results[row].n_tokens)
                if found is not None:
                    state.pending[row] = found

    def _rescore(self, state: _Scoring) -> _Feed:
        """The feed re-scoring a policy's triggered answers, each steered from its kept
        tokens on (the triggers recorded in its results)."""
        rows = sorted(state.pending)
        for row in rows:
            position, trigger = state.pending[row]
            result = state.results[row]
            if not result.triggered:
                result.triggered, result.trigger_token = True, position
            result.p_true, result.strength = trigger.p_true, trigger.strength
            start = trigger.keep if position is None else self.answer_offset + trigger.keep
            state.schedules[row].append((self.steer_from + start, trigger.strength))
        state.pending = {}
        again = any(state.trackings[row].active for row in rows)
        return _Feed(state.policy, rows, [state.schedules[row] for row in rows], again)

    def _walk_steered(self, state: _Scoring, rows: list[int], run: _Pass) -> None:
        """Offer the steered readings after each answer's segment start to its tracking."""
        steered = self._readings(state.policy, run)[:, 1:]
        for index, row in enumerate(rows):
            tracking = state.trackings[row]
            if tracking.active:
                found = self._walk(
                    tracking,
                    steered[index],
                    state.results[row].n_tokens,
                    self.answer_offset + tracking.segment_start,
                )
                if found is not None:
                    state.pending[row] = found

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


# --------------------------------------------------------------------------- questions together

ROWS = 4
"""Questions whose trees share a forward, at most (each is a row of the batch). On a CPU
more rows stop paying: the attention's scores of a wide batch leave the caches."""
NODE_SLOTS = 4096
"""Rows times the widest tree, at most, in one forward (a sweep of many settings makes
wide trees; fewer of them then share a forward)."""


@dataclass
class ScoringJob:
    """One question's scoring for :func:`score_together`: ``scorer`` (its prompt),
    continuations as token ids, the policies and, optionally, the continuations' texts."""

    scorer: PrefixScorer
    cont_ids: Sequence[Sequence[int]]
    policies: Sequence[Policy]
    texts: Sequence[str] | None = None


def score_together(
    jobs: Sequence[ScoringJob], *, rows: int = ROWS
) -> list[list[list[AnswerScore]]]:
    """Each job's :meth:`PrefixScorer.score_policies`, the jobs' passes run together.

    A forward of one question's tree is mostly fixed cost on a CPU; here the questions
    advance in lockstep and, at each round, their trees are the rows of one forward (up to
    ``rows`` at a time), each row after its own prompt. A row's numbers are those of its
    question alone, up to float rounding.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if not jobs:
        return []
    model = jobs[0].scorer.model
    steps = [job.scorer._score_steps(job.cont_ids, job.policies, job.texts) for job in jobs]
    return _drive(model, steps, rows)


def _alone(model: TransformerBridge, steps: Steps[T]) -> T:
    """Run one question's steps, each forward on its own."""
    return _drive(model, [steps], 1)[0]


def _drive(model: TransformerBridge, steps: Sequence[Steps[Any]], rows: int) -> list[Any]:
    """Advance every generator of steps to its end; at each round the forwards they ask
    for run together, grouped by the block they start at."""
    results: list[Any] = [None] * len(steps)
    waiting: dict[int, list[_Request]] = {}

    def advance(index: int, outputs: list[_Output] | None) -> None:
        try:
            waiting[index] = steps[index].send(outputs)  # type: ignore[arg-type]
        except StopIteration as stop:
            waiting.pop(index, None)
            results[index] = stop.value

    for index in range(len(steps)):
        advance(index, None)
    while waiting:
        groups: dict[tuple[Any, ...], list[tuple[int, int, _Request]]] = {}
        for index, requests in waiting.items():
            for position, request in enumerate(requests):
                key = (request.start, tuple(request.scorer._layers()))
                groups.setdefault(key, []).append((index, position, request))
        outputs: dict[tuple[int, int], _Output] = {}
        for members in groups.values():
            members.sort(key=lambda member: -len(member[2].tree))
            for chunk in _chunks(members, rows):
                done = _forward_together(model, [request for _, _, request in chunk])
                outputs.update(
                    ((index, position), out)
                    for (index, position, _), out in zip(chunk, done, strict=True)
                )
        for index in list(waiting):
            count = len(waiting[index])
            advance(index, [outputs[(index, position)] for position in range(count)])
    return results


def _chunks(members: list[Any], rows: int) -> list[list[Any]]:
    """``members`` (widest tree first) cut into forwards that pay off: at most ``rows``
    rows and :data:`NODE_SLOTS` node slots, no tree padded to more than twice its width,
    and only requests steered by the same interventions together (each intervention's
    hooks act on the whole batch, so a question's own random directions would make every
    row of its forward pay for them)."""
    chunks: list[list[Any]] = []
    for member in members:
        request = member[2]
        for chunk in chunks:
            first = chunk[0][2]
            width = len(first.tree)
            if (
                len(chunk) < rows
                and (len(chunk) + 1) * width <= NODE_SLOTS
                and 2 * len(request.tree) >= width
                and _same_interventions(first, request)
            ):
                chunk.append(member)
                break
        else:
            chunks.append([member])
    return chunks


def _slot(seen: list[Any], item: Any) -> int:
    """``item``'s index in ``seen``, compared by identity (an intervention is the object a
    policy hands out), appended first if it is not there."""
    for index, other in enumerate(seen):
        if other is item:
            return index
    seen.append(item)
    return len(seen) - 1


def _same_interventions(one: _Request, other: _Request) -> bool:
    def ids(request: _Request) -> set[int]:
        return {id(intervention) for intervention, _ in request.steer}

    return ids(one) == ids(other)


def _forward_together(model: TransformerBridge, requests: Sequence[_Request]) -> list[_Output]:
    """One forward whose rows are ``requests`` (same start block, same anchored layers),
    each row's tree after its own prompt: prompts and trees are padded to the longest, and
    no row sees another's padding."""
    first = requests[0].scorer
    device, layers = first.device, first._layers()
    width = max(len(request.tree) for request in requests)
    prompts = [request.scorer.prompt_length for request in requests]
    longest = max(prompts)
    count = len(requests)
    mask = torch.cat(
        [
            request.tree.attention(prompt, width=width, room=longest)
            for request, prompt in zip(requests, prompts, strict=True)
        ]
    )
    positions = torch.zeros(count, width, dtype=torch.long)
    inputs = requests[0].inputs.new_zeros((count, width, *requests[0].inputs.shape[1:]))
    for row, request in enumerate(requests):
        tree, n = request.tree, len(request.tree)
        positions[row, :n] = request.scorer.answer_start - 1 + torch.tensor(tree.depth)
        inputs[row, :n] = request.inputs
    distinct: list[Intervention] = []
    amounts: list[Tensor] = []
    for row, request in enumerate(requests):
        for intervention, values in request.steer:
            group = _slot(distinct, intervention)
            if group == len(amounts):
                amounts.append(torch.zeros(count, width, device=device))
            amounts[group][row, : len(values)] = values
    hooks = [
        hook
        for intervention, values in zip(distinct, amounts, strict=True)
        for hook in intervention.hooks(values, positions=values != 0)
    ]
    store: dict[int, Tensor] = {}
    kept: dict[int, Tensor] = {}
    captures = capture(layers, store)
    if layers and any(request.keep_resid for request in requests):
        captures += capture([layers[0]], kept, site="resid_pre")
    with torch.inference_mode():
        final = final_residual(
            model,
            inputs,
            mask.to(device),
            captures,
            hooks,
            past=_stacked_cache([request.scorer for request in requests], longest),
            start_at_layer=requests[0].start,
            position_ids=positions.to(device),
        )
    resid = next(iter(kept.values())) if kept else None
    return [
        _Output(
            final[row, : len(request.tree)],
            {layer: z[row : row + 1, : len(request.tree)] for layer, z in store.items()},
            None if resid is None else resid[row, : len(request.tree)],
        )
        for row, request in enumerate(requests)
    ]


def _stacked_cache(scorers: Sequence[PrefixScorer], longest: int) -> Any:
    """A KV cache whose row ``r`` holds scorer ``r``'s prompt, zeros after it up to
    ``longest`` positions (``None`` when no scorer has a cached prompt)."""
    if longest == 0:
        return None
    if len(scorers) == 1:
        return build_cache(cache_layers(scorers[0].cache))
    per_scorer = [
        cache_layers(scorer.cache) if scorer.cache is not None else None for scorer in scorers
    ]
    template = next(layers for layers in per_scorer if layers is not None)
    stacked = []
    for layer, (keys, values) in enumerate(template):
        shape = (len(scorers), keys.shape[1], longest, keys.shape[3])
        both = [keys.new_zeros(shape), values.new_zeros(shape)]
        for row, layers in enumerate(per_scorer):
            if layers is not None:
                for buffer, held in zip(both, layers[layer], strict=True):
                    buffer[row, :, : held.shape[2]] = held[0]
        stacked.append((both[0], both[1]))
    return build_cache(stacked)
