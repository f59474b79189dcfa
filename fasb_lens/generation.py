"""Generation with flexible steering and backtracking: one token loop, pluggable policies.

The loop generates a batch of prompts token by token. After every token it reads the
anchored heads' ``hook_z`` at the newest position, turns them into ``p_true`` with the
policy's tracker, and asks the **policy** (:mod:`fasb_lens.policies`) what to do: go on,
or steer from now on, possibly after dropping the last tokens (a backtrack). This module
is one of the policies' two drivers (the other is :mod:`fasb_lens.policy_walk`); it counts a
reading as the number of tokens generated so far, the token chosen from that reading
included, so FASB's first check comes once ``backtrack_tokens`` tokens exist.

Two execution modes:

* ``"cached"`` (default) keeps a KV cache. A backtrack discards the dropped positions
  (cropping the cache when they are at its end) and feeds the last kept token again with
  steering. Positions generated with steering keep their steered keys and values, so
  later tokens see the earlier steering.
* ``"reference"`` is the authors' loop: every step recomputes the whole sequence without a
  cache and adds the vector at the last position only, so earlier positions are always
  seen unsteered. It stops only at EOS or the token budget, as theirs does.

The two agree exactly while nothing is steered and on the first token after a trigger;
afterwards they differ by design. Every call returns a :class:`GenerationTrace` per
prompt: the tokens, ``p_true`` at every step, the check that triggered, what was thrown
away, the strength and the timings.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.decisions import Anchored, Policy, Tracker, Tracking, Trigger, Unsteered
from fasb_lens.decoding import CachedDecoder, Decoder, PromptCache, ReferenceDecoder
from fasb_lens.interventions import capture, heads_from, hooked
from fasb_lens.models import model_device, tokenize
from fasb_lens.options import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_options, option
from fasb_lens.prefix import SharedPrefix
from fasb_lens.traces import QA_STOP, GenerationTrace, Step, extract_answer

Mode = Literal["cached", "reference"]
"""How the loop runs the model: with a KV cache, or recomputing like the authors' loop."""

__all__ = [
    "QA_STOP",
    "GenerationConfig",
    "GenerationTrace",
    "Mode",
    "Step",
    "extract_answer",
    "generate",
    "replay",
]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode: budget, stopping, greedy or sampled, and the execution mode.

    ``temperature`` 0 is greedy; above 0, tokens are sampled (nucleus ``top_p``) with a
    generator seeded from ``seed`` and the prompt, so a prompt samples the same tokens
    alone or in any batch. ``stop_strings`` end a row in ``cached`` mode; ``reference``
    mode stops only at EOS or the budget and the answer is cut afterwards.
    """

    max_new_tokens: int = option(50, help="token budget of each answer", bounds=AT_LEAST_ONE)
    stop_strings: tuple[str, ...] = ()
    stop_at_eos: bool = True
    temperature: float = option(0.0, help="0 = greedy; above 0, sampled", bounds=NON_NEGATIVE)
    top_p: float = option(
        1.0,
        help="nucleus sampling's probability mass (with --temperature)",
        bounds=Bounds(above=0, maximum=1),
    )
    seed: int = option(0, help="seed of sampling")
    mode: Mode = option(
        "cached",
        help="cached: a KV cache (default); reference: the authors' recompute loop",
        choices=("cached", "reference"),
    )
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        check_options(self)
        if self.mode not in ("cached", "reference"):
            raise ValueError(f"mode must be 'cached' or 'reference', got {self.mode!r}")


# --------------------------------------------------------------------------- the loop


@dataclass
class _Row:
    """The decoding state of one prompt."""

    prompt_ids: list[int]
    generator: torch.Generator | None
    tracking: Tracking
    tokens: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    strength: float = 0.0
    kept_steps: list[int] = field(default_factory=list)  # the step of each kept token
    backtracks: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    stop_reason: str = ""


def _sample(logits: Tensor, rows: list[_Row], config: GenerationConfig) -> list[int]:
    if config.temperature == 0:
        return logits.argmax(dim=-1).tolist()
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > config.top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return [
        int(torch.multinomial(probs[i], 1, generator=row.generator)) for i, row in enumerate(rows)
    ]


def _row_generator(prompt: str, config: GenerationConfig, device: torch.device) -> torch.Generator:
    digest = hashlib.sha256(f"{config.seed}\x00{prompt}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little"))


class _Loop:
    """The token loop over a batch: decode, track, let the policy decide, stop."""

    def __init__(
        self,
        model: TransformerBridge,
        prompts: list[str],
        policies: list[Policy],
        steering: Anchored | None,
        config: GenerationConfig,
        prompt_cache: PromptCache | None = None,
        shared: SharedPrefix | None = None,
    ) -> None:
        self.model, self.policies, self.config = model, policies, config
        self.tokenizer = model.tokenizer
        self.tracker_name = _one_tracker(policies)
        self.tracker: Tracker | None = (
            steering.tracker(self.tracker_name) if steering is not None else None
        )
        device = model_device(model)
        sampling = config.temperature > 0
        prompt_ids = tokenize(model, prompts, prepend_bos=config.prepend_bos)
        if prompt_cache is not None and prompt_cache.prompt_ids != prompt_ids:
            raise ValueError("the prompt cache was built for other prompts")
        self.rows = [
            _Row(
                ids,
                _row_generator(prompt, config, device) if sampling else None,
                Tracking(policy),
                strength=float(policy.initial_strength()),
            )
            for prompt, ids, policy in zip(prompts, prompt_ids, policies, strict=True)
        ]
        self.decoder: Decoder = (
            CachedDecoder(model, self.rows, prompt_cache, shared)
            if config.mode == "cached"
            else ReferenceDecoder(model, self.rows)
        )
        self.interventions = _row_interventions(policies, steering)
        self.device = device
        self.captured: dict[int, Tensor] = {}
        self.strengths = torch.zeros(0)  # the decoding rows' strengths, read by the hooks

    def run(self) -> list[GenerationTrace]:
        start = time.perf_counter()
        n_steps = 0
        decoder = self.decoder
        decoder.prepare()
        with torch.inference_mode():
            while decoder.active:
                with hooked(self.model, self._hooks()):
                    while decoder.active and not decoder.compaction_due():
                        logits = decoder.step()
                        p_true = self._p_true()
                        active = list(decoder.active)
                        tokens = _sample(logits, [self.rows[i] for i in active], self.config)
                        for position, index in enumerate(active):
                            row = self.rows[index]
                            if not row.done:
                                self._advance(index, row, tokens[position], p_true[position])
                        n_steps += 1
                decoder.compact()
        seconds = time.perf_counter() - start
        generated = sum(len(row.steps) for row in self.rows)
        timings = {
            "seconds": round(seconds, 4),
            "steps": n_steps,
            "batch_size": len(self.rows),
            "tokens_per_second": round(generated / seconds, 2) if seconds else 0.0,
        }
        return [
            self._trace(row, policy, timings)
            for row, policy in zip(self.rows, self.policies, strict=True)
        ]

    def _hooks(self) -> list:
        """The tracker's capture and the policy's steering for the rows now decoding
        (rebuilt when finished rows leave the batch)."""
        hooks = []
        if self.tracker is not None:  # read before any steering on the same hook point
            layers = [head.layer for head in self.tracker.heads]
            hooks += capture(layers, self.captured, select=lambda z: z[:, -1])
        if self.interventions is not None:
            active = self.decoder.active
            self.strengths = torch.tensor(
                [self.rows[i].strength for i in active], device=self.device
            )
            hooks += _batch_intervention([self.interventions[i] for i in active]).hooks(
                self.strengths, positions="last"
            )
        return hooks

    def _p_true(self) -> list[float | None]:
        if self.tracker is None:
            return [None] * len(self.decoder.active)
        z = heads_from(self.captured, self.tracker.heads)
        return self.tracker.p_true(z.float()).tolist()

    def _advance(self, index: int, row: _Row, token: int, p_true: float | None) -> None:
        row.steps.append(
            Step(len(row.steps), token, self.tokenizer.decode([token]), p_true, row.strength)
        )
        row.kept_steps.append(len(row.steps) - 1)
        row.tokens.append(token)
        reason = self._stop_reason(row, token)
        decision = row.tracking.observe(
            len(row.tokens), p_true, ending=bool(reason), at_prompt_end=len(row.tokens) == 1
        )
        row.steps[-1].checked = decision.checked
        if decision.trigger is not None and decision.trigger.drop:
            row.done, row.stop_reason = True, "dropped"  # a detector's trigger: stop here
        elif decision.trigger is not None:
            self._trigger(index, row, decision.trigger)
        elif reason:
            row.done, row.stop_reason = True, reason

    def _stop_reason(self, row: _Row, token: int) -> str:
        config = self.config
        if config.stop_at_eos and token == self.tokenizer.eos_token_id:
            return "eos"
        if config.mode == "cached" and config.stop_strings:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            if any(stop in text for stop in config.stop_strings):
                return "stop_string"
        if len(row.tokens) >= config.max_new_tokens:
            return "max_new_tokens"
        return ""

    def _trigger(self, index: int, row: _Row, trigger: Trigger) -> None:
        row.strength = trigger.strength
        if self.interventions is not None:
            self.strengths[self.decoder.active.index(index)] = trigger.strength
        generated, n_keep = len(row.tokens), trigger.keep
        discarded = row.tokens[n_keep:]
        for step_index in row.kept_steps[n_keep:]:
            row.steps[step_index].kept = False
        del row.kept_steps[n_keep:]
        if n_keep < generated:
            self.decoder.backtrack(index, n_keep)
        row.backtracks.append(
            {
                "step": len(row.steps) - 1,
                "p_true": trigger.p_true,
                "strength": trigger.strength,
                "kept_tokens": n_keep,
                "discarded_ids": discarded,
            }
        )

    def _trace(self, row: _Row, policy: Policy, timings: dict[str, float]) -> GenerationTrace:
        decode = self.tokenizer.decode
        events = row.backtracks
        discarded = [token for event in events for token in event["discarded_ids"]]
        text = decode(row.tokens, skip_special_tokens=True)
        return GenerationTrace(
            prompt=decode(row.prompt_ids, skip_special_tokens=False),
            prompt_ids=row.prompt_ids,
            output_ids=list(row.tokens),
            text=text,
            answer=extract_answer(text),
            policy=policy.name,
            mode=self.config.mode,
            steps=row.steps,
            trigger_step=events[0]["step"] if events else None,
            trigger_p_true=events[0]["p_true"] if events else None,
            strength=row.strength,
            backtracks=events,
            discarded_ids=discarded,
            discarded_text=decode(discarded, skip_special_tokens=True),
            stop_reason=row.stop_reason,
            timings=timings,
            tracker=self.tracker_name if self.tracker is not None else None,
        )


def _one_tracker(policies: Sequence[Policy]) -> str:
    """The tracker every row's policy reads (a batch reads one)."""
    trackers = {policy.tracker for policy in policies}
    if len(trackers) != 1:
        raise ValueError(f"policies of one batch must read one tracker, got {sorted(trackers)}")
    return trackers.pop()


def _row_interventions(policies: Sequence[Policy], steering: Anchored | None) -> list | None:
    """Each row's intervention (built once per distinct policy), or ``None`` when no row's
    policy steers."""
    built: dict[int, Any] = {}
    for policy in policies:
        if id(policy) not in built:
            built[id(policy)] = policy.intervention(steering)
    interventions = [built[id(policy)] for policy in policies]
    if all(intervention is None for intervention in interventions):
        return None
    if any(intervention is None for intervention in interventions):
        raise ValueError("a batch cannot mix policies that steer with policies that do not")
    return interventions


def _batch_intervention(interventions: Sequence[Any]) -> Any:
    """One intervention for the decoding rows: theirs when they share one, otherwise one
    acting as each row's (:meth:`~fasb_lens.decisions.Intervention.per_row`)."""
    first = interventions[0]
    if all(intervention is first for intervention in interventions):
        return first
    return first.per_row(interventions)


def replay(policy: Policy, unsteered: GenerationTrace) -> GenerationTrace | None:
    """``policy``'s generation read off ``unsteered`` (the same prompt generated without
    steering, under the same settings), when the policy never acts on it.

    A policy that steers only after a trigger adds nothing before it, so up to its first
    trigger it generates the unsteered tokens and reads the unsteered readings: when
    walking ``unsteered``'s readings through the policy triggers nothing, that generation
    is the policy's. ``None`` when it would steer (from the start, or at a trigger), or
    when ``unsteered`` was read by another tracker than the policy's.
    """
    steps = unsteered.steps
    if (
        policy.initial_strength()
        or unsteered.backtracks
        or unsteered.tracker != policy.tracker
        or not steps
    ):
        return None
    replayed = []
    for index, decision in Tracking(policy).walk([step.p_true for step in steps]):
        if decision.trigger is not None:
            return None
        replayed.append(replace(steps[index], checked=decision.checked))
    return replace(unsteered, policy=policy.name, steps=replayed, timings={}, reused=True)


def generate(
    model: TransformerBridge,
    prompts: str | Sequence[str],
    *,
    policy: Policy | Sequence[Policy] | None = None,
    steering: Anchored | None = None,
    config: GenerationConfig | None = None,
    prompt_cache: PromptCache | None = None,
    shared: SharedPrefix | None = None,
    unsteered: Sequence[GenerationTrace] | None = None,
) -> list[GenerationTrace]:
    """Generate a continuation of every prompt under ``policy``, as one batch.

    Args:
        prompts: prompt texts (see :meth:`fasb_lens.data.PromptFormat.generation_prompt`
            or :func:`fasb_lens.models.chat_prompt`); a batch gives the same tokens as each
            prompt alone.
        policy: a :class:`~fasb_lens.policies.Policy` (default: no steering); see
            :func:`~fasb_lens.policies.make_policy`. A sequence gives each prompt its own
            (one tracker for all; several strengths of one policy, or a control's draws,
            then share every forward).
        steering: the anchored heads' vectors and tracker; without steering policies it
            is only used to report ``p_true``.
        config: decoding settings and the execution mode.
        prompt_cache: :class:`PromptCache` of these prompts, to share the prompt's compute
            between several calls (cached mode; the reference loop recomputes anyway).
        shared: the beginning all prompts share, run once (cached mode).
        unsteered: each prompt's generation without steering under ``config`` (the
            ``none`` policy with this policy's tracker): prompts on which the policy
            would never act reuse it (:func:`replay`) instead of being generated again.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts to generate from")
    policies = _policies(policy, len(prompts))
    if steering is not None:
        steering.check_model(model)
    distinct = list({id(row_policy): row_policy for row_policy in policies}.values())
    for intervention in _row_interventions(distinct, steering) or []:
        intervention.check_model(model)
    config = config or GenerationConfig()
    traces: list[GenerationTrace | None] = [None] * len(prompts)
    if unsteered is not None:
        if len(unsteered) != len(prompts):
            raise ValueError(f"{len(unsteered)} unsteered generations for {len(prompts)} prompts")
        traces = [
            replay(row_policy, trace) if trace.mode == config.mode else None
            for row_policy, trace in zip(policies, unsteered, strict=True)
        ]
    todo = [index for index, trace in enumerate(traces) if trace is None]
    if todo:
        if prompt_cache is not None and len(todo) < len(prompts):
            prompt_cache = prompt_cache.select(todo)
        chosen = [prompts[index] for index in todo]
        loop = _Loop(
            model, chosen, [policies[i] for i in todo], steering, config, prompt_cache, shared
        )
        for index, trace in zip(todo, loop.run(), strict=True):
            traces[index] = trace
    return traces  # type: ignore[return-value]


def _policies(policy: Policy | Sequence[Policy] | None, n_prompts: int) -> list[Policy]:
    """One policy per prompt: ``policy`` for all, or the sequence as given."""
    if policy is None or isinstance(policy, Policy):
        return [policy or Unsteered()] * n_prompts
    policies = list(policy)
    if len(policies) != n_prompts:
        raise ValueError(f"{len(policies)} policies for {n_prompts} prompts")
    return policies
