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

The scorer runs passes; which answers are steered, from where and how strongly is the
policy's to decide, fed readings at the answer tokens by :mod:`fasb_lens.policy_walk` (the
policies' second driver). The forwards themselves, many trees after their prompts in one
batch, are :mod:`fasb_lens.tree_forward`'s; log-probabilities come from
:mod:`fasb_lens.logprobs`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.decisions import DEFAULT_TRACKER, Anchored, Intervention, Policy, Unsteered
from fasb_lens.interventions import heads_from
from fasb_lens.models import cache_length, model_device, tokenize
from fasb_lens.policy_walk import Feed, PolicyWalk, strengths
from fasb_lens.prefix import SharedPrefix, prefill
from fasb_lens.tree_forward import Steps, TreeOutput, TreeRequest, alone, distinct_index, drive
from fasb_lens.trees import TokenTree

ROWS = 4
"""Questions whose trees share a forward, at most (each is a row of the batch). On a CPU
more rows stop paying: the attention's scores of a wide batch leave the caches."""


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
    dropped: bool = False  # a detector left the answer out (its log_prob is unsteered)


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
    the ``(s+1)``-th token, as the method describes); the authors' TruthfulQA code uses 1
    (checks from the ``(s+2)``-th token, steering never before the second answer token,
    no check at all on a one-token answer). ``prefix_ids`` gives the prefix as token ids
    instead of text, and ``shared`` a :class:`~fasb_lens.prefix.SharedPrefix` the prefix
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
        self._layers = tuple(sorted({head.layer for head in steering.heads})) if steering else ()

    @property
    def prompt_length(self) -> int:
        """Positions held by the prompt's cache (the prompt but its last token)."""
        return cache_length(self.cache) if self.cache is not None else 0

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers whose ``hook_z`` every pass keeps: the anchored layers of the steering
        this scorer was built with (a scorer from :meth:`with_steering` keeps its parent's,
        so that the passes they share hold every head of both)."""
        return self._layers

    @property
    def prefix_p_true(self) -> float | None:
        """The default tracker's reading at the prompt's last token (``None`` unsteered)."""
        return None if self.steering is None else self._prompt_end(DEFAULT_TRACKER)

    def _prompt_end(self, tracker: str) -> float:
        """The tracker's reading at the prompt's last token (its pass run if need be)."""
        prefix = alone(self.model, self._prefix_steps())
        return float(self._tracker_readings(tracker, prefix)[0, 0])

    def with_steering(self, steering: Anchored) -> PrefixScorer:
        """This scorer with a steering on a subset of its heads (fewer anchored heads),
        sharing the prompt's cache and the unsteered passes, which hold every head."""
        if self.steering is None or not set(steering.heads) <= set(self.steering.heads):
            raise ValueError("with_steering takes a steering on a subset of the scorer's heads")
        other = copy.copy(self)
        other.steering = steering
        return other

    # ----------------------------------------------------------------------- passes

    def _request(self, tree: TokenTree, inputs: Tensor, **options: Any) -> TreeRequest:
        """A forward of ``tree`` after this scorer's prompt, keeping the anchored heads'
        ``hook_z`` (``options``: the rest of :class:`~fasb_lens.tree_forward.TreeRequest`)."""
        return TreeRequest(tree, inputs, prompt=self.cache, capture=self.layers, **options)

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
        (out,) = yield [self._request(tree, ids, keep_resid=bool(self.layers))]
        return _Pass(out.totals, out.z, tree.path_nodes(self.device), out.resid)

    def _feeds_steps(self, cont_ids: list[list[int]], feeds: Sequence[Feed]) -> Steps[list[_Pass]]:
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
        feeds: list[Feed],
        cont_ids: list[list[int]],
        start: int | None,
        plain: _Pass | None,
    ) -> tuple[TreeRequest, Callable[[TreeOutput], list[_Pass]]]:
        """The forward of ``feeds`` (see :meth:`_feeds_steps`) from block ``start``, fed
        there the residual stream the unsteered pass ``plain`` kept (``None``: every
        block, from the tokens), and how its output becomes each feed's pass."""
        distinct: list[Intervention] = []
        answers, per_answer, groups, rows = [], [], [], []
        for intervention, feed in zip(interventions, feeds, strict=True):
            group = distinct_index(distinct, intervention)
            for row, schedule in zip(feed.rows, feed.schedules, strict=True):
                answers.append(cont_ids[row])
                per_answer.append(strengths(schedule, self.answer_start - 1, len(cont_ids[row])))
                groups.append(group)
                rows.append(row)
        keys = [
            [(group, value) if value else 0.0 for value in values]
            for group, values in zip(groups, per_answer, strict=True)
        ]
        track = any(feed.track for feed in feeds)
        tree = TokenTree.build(self.prefix_ids[-1], answers, keys=keys, leaves=track)
        at_node = torch.zeros(len(distinct), len(tree), device=self.device)
        for path, values, group in zip(tree.paths, per_answer, groups, strict=True):
            at_node[group, list(path)] = torch.tensor(values[: len(path)], device=self.device)
        if start is None or plain is None:
            inputs = torch.tensor(tree.tokens, device=self.device)
        else:
            inputs = self._residual_inputs(tree, plain, rows)
        steer = list(zip(distinct, at_node, strict=True))
        request = self._request(tree, inputs, start=start, steer=steer)

        def finish(out: TreeOutput) -> list[_Pass]:
            nodes, store = tree.path_nodes(self.device), out.z if track else {}
            passes, begin = [], 0
            for feed in feeds:
                end = begin + len(feed.rows)
                passes.append(_Pass(out.totals[begin:end], store, nodes[begin:end]))
                begin = end
            return passes

        return request, finish

    def _start_layer(self, intervention: Intervention, plain: _Pass | None) -> int | None:
        """The block a steered forward starts at: the lowest anchored layer, whose input
        the unsteered pass ``plain`` kept, when the intervention changes nothing below it
        (``None``: run every block)."""
        if plain is None or plain.resid is None:
            return None
        lowest = self.layers[0]
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
        z = heads_from(run.z, tracker.heads, device=run.nodes.device)
        return tracker.p_true(z.float())[0][run.nodes]

    def _readings(self, policy: Policy, run: _Pass) -> Tensor:
        """The policy's tracker at each answer token of a pass: ``[answers, pos]``."""
        return self._tracker_readings(policy.tracker, run)[:, 1:]

    # ----------------------------------------------------------------------- scoring

    def score(
        self, continuations: Sequence[str], policy: Policy | None = None
    ) -> list[AnswerScore]:
        """Log-likelihood of each continuation (no BOS; e.g. ``" " + answer``)."""
        cont_ids = tokenize(self.model, list(continuations), prepend_bos=False)
        return self.score_ids(cont_ids, policy, texts=continuations)

    def readings(
        self, cont_ids: Sequence[Sequence[int]], tracker: str = DEFAULT_TRACKER
    ) -> list[list[float]]:
        """The tracker's unsteered readings for each continuation (token ids): at the
        prompt's last token, then at each of its tokens."""
        if self.steering is None:
            raise ValueError("readings need a steering artifact (the anchored heads)")
        lists = [list(ids) for ids in cont_ids]
        prompt_end = self._prompt_end(tracker)
        values = self._tracker_readings(tracker, alone(self.model, self._unsteered_steps(lists)))
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
        return alone(self.model, self.steps(cont_ids, policies, texts))

    def steps(
        self,
        cont_ids: Sequence[Sequence[int]],
        policies: Sequence[Policy],
        texts: Sequence[str] | None = None,
    ) -> Steps[list[list[AnswerScore]]]:
        """:meth:`score_policies` as steps (:data:`~fasb_lens.tree_forward.Steps`): a
        generator yielding the forwards it needs, round by round, so that other questions'
        forwards can share them (:func:`score_together`)."""
        cont_ids = [list(ids) for ids in cont_ids]
        if texts is None:
            texts = [self.model.tokenizer.decode(ids) for ids in cont_ids]
        lengths = [len(ids) for ids in cont_ids]
        walks = [
            PolicyWalk.begin(
                policy, lengths, steer_from=self.steer_from, answer_offset=self.answer_offset
            )
            for policy in policies
        ]
        deciding = [walk.policy for walk in walks if walk.policy.decides]
        if deciding and self.steering is None:
            raise ValueError(f"the {deciding[0].name} policy needs a steering artifact")
        prefix = (yield from self._prefix_steps()) if deciding else None
        if any(not walk.initial for walk in walks):
            plain = yield from self._unsteered_steps(cont_ids)
            for walk in (walk for walk in walks if not walk.initial):
                self._first_pass(walk, prefix, plain)
        if steered := [walk for walk in walks if walk.initial]:
            runs = yield from self._feeds_steps(cont_ids, [walk.first_feed() for walk in steered])
            for walk, run in zip(steered, runs, strict=True):
                self._first_pass(walk, prefix, run)
        while active := [walk for walk in walks if walk.pending]:
            feeds = [walk.rescore() for walk in active]
            runs = yield from self._feeds_steps(cont_ids, feeds)
            for walk, feed, run in zip(active, feeds, runs, strict=True):
                readings = self._readings(walk.policy, run) if feed.track else None
                walk.rescored(feed, run.totals, readings)
        return [
            [
                AnswerScore(text, total, length, **asdict(outcome))
                for text, total, length, outcome in zip(
                    texts, walk.totals.tolist(), lengths, walk.outcomes, strict=True
                )
            ]
            for walk in walks
        ]

    def _first_pass(self, walk: PolicyWalk, prefix: _Pass | None, run: _Pass) -> None:
        """A policy's first pass over every answer: its scores and, for a deciding policy,
        the decisions at the prompt's end (``prefix``: its pass) and along the answers."""
        walk.totals = run.totals
        if walk.policy.decides:
            assert prefix is not None
            prompt_end = float(self._tracker_readings(walk.policy.tracker, prefix)[0, 0])
            walk.first_decisions(prompt_end, self._readings(walk.policy, run))


# --------------------------------------------------------------------------- questions together


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
    steps: list[Any] = [job.scorer.steps(job.cont_ids, job.policies, job.texts) for job in jobs]
    return drive(model, steps, rows)
