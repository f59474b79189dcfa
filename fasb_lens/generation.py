"""Generation with flexible steering and backtracking: one token loop, pluggable policies.

The loop generates a batch of prompts token by token. After every token it reads the
anchored heads' ``hook_z`` at the newest position, turns them into ``p_true`` with the
tracker, and asks the **policy** what to do:

* :class:`NoSteering` - plain decoding;
* :class:`FixedSteering` - ITI: strength ``alpha`` at every position, from the prompt's
  last token on;
* :class:`FASB` - once ``backtrack_tokens`` tokens exist (and at the last step, at EOS
  or at a stop string) check ``p_true``; at the first check below ``threshold``, set the
  strength to ``alpha * (1 - p_true)``, drop the last ``backtrack_tokens`` tokens and
  regenerate the rest of the budget with steering. Its switches give the paper's
  ablations (fixed strength, no backtracking, deciding once after the question) and
  options beyond it (several backtracks, the Prototype tracker, a running-mean trigger);
* :class:`CAASteering` - the CAA baseline: a residual-stream vector at one layer.

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

import copy
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.models import (
    forward,
    hook_z_name,
    model_device,
    pad,
    pad_token_id,
    tokenize,
)
from fasb_lens.probes import Tracker
from fasb_lens.steering import ResidualSteering, Steering, TrackerKind

Mode = Literal["cached", "reference"]
QA_STOP = "Q:"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode: budget, stopping, greedy or sampled, and the execution mode.

    ``temperature`` 0 is greedy; above 0, tokens are sampled (nucleus ``top_p``) with a
    generator seeded from ``seed`` and the prompt, so a prompt samples the same tokens
    alone or in any batch. ``stop_strings`` end a row in ``cached`` mode; ``reference``
    mode stops only at EOS or the budget and the answer is cut afterwards.
    """

    max_new_tokens: int = 50
    stop_strings: tuple[str, ...] = ()
    stop_at_eos: bool = True
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    mode: Mode = "cached"
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.mode not in ("cached", "reference"):
            raise ValueError(f"mode must be 'cached' or 'reference', got {self.mode!r}")


@dataclass(frozen=True)
class NoSteering:
    """Plain decoding; the tracker still reports ``p_true`` if a steering is given."""

    name: str = "none"


@dataclass(frozen=True)
class FixedSteering:
    """ITI: the anchored heads' vectors at strength ``alpha`` at every position."""

    alpha: float
    name: str = "fixed"


@dataclass(frozen=True)
class CAASteering:
    """The CAA baseline: ``alpha`` times a residual-stream vector at every position."""

    caa: ResidualSteering
    alpha: float
    name: str = "caa"


@dataclass(frozen=True)
class FASB:
    """Flexible activation steering with backtracking, and its variants.

    Args:
        alpha, threshold, backtrack_tokens: the paper's alpha, beta and s.
        adaptive: strength ``alpha * (1 - p_true)``; ``False`` uses ``alpha`` ("w/o adaptive").
        backtrack: drop the last ``backtrack_tokens`` tokens on a trigger; ``False`` keeps
            them and steers from the next token on ("w/o backtracking").
        after_question: decide once, from the question's last token, before generating
            (the "after question" ablation, like CAST); the first token is then
            regenerated with steering if it triggers.
        max_backtracks: triggers allowed (the paper: 1). After a trigger, checking
            resumes once ``backtrack_tokens`` new tokens exist.
        tracker: ``"probe"`` (the authors') or ``"prototype"`` (the paper's alternative).
        running_mean: trigger on the mean ``p_true`` of the current segment instead of
            the latest value.
    """

    alpha: float = 60.0
    threshold: float = 0.6
    backtrack_tokens: int = 10
    adaptive: bool = True
    backtrack: bool = True
    after_question: bool = False
    max_backtracks: int = 1
    tracker: TrackerKind = "probe"
    running_mean: bool = False

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.backtrack_tokens < 0 or self.max_backtracks < 1:
            raise ValueError("alpha and backtrack_tokens must be >= 0, max_backtracks >= 1")
        if self.tracker not in ("probe", "prototype"):
            raise ValueError(f"tracker must be 'probe' or 'prototype', got {self.tracker!r}")

    @property
    def name(self) -> str:
        if self.after_question:
            return "after_question"
        if not self.backtrack:
            return "fasb_no_backtrack"
        return "fasb" if self.adaptive else "fasb_fixed_strength"

    def strength(self, p_true: float) -> float:
        return self.alpha * (1.0 - p_true) if self.adaptive else self.alpha


Policy = NoSteering | FixedSteering | FASB | CAASteering

POLICY_NAMES = (
    "none",
    "fixed",
    "fasb",
    "fasb_fixed_strength",
    "fasb_no_backtrack",
    "after_question",
    "caa",
)


def make_policy(
    name: str,
    *,
    alpha: float = 60.0,
    threshold: float = 0.6,
    backtrack_tokens: int = 10,
    caa: ResidualSteering | None = None,
    **options: Any,
) -> Policy:
    """A policy by name (as the command line and the experiment runner name them)."""
    if name == "none":
        return NoSteering()
    if name in ("fixed", "iti"):
        return FixedSteering(alpha)
    if name == "caa":
        if caa is None:
            raise ValueError("the caa policy needs a CAA vector (ResidualSteering)")
        return CAASteering(caa, alpha)
    variants = {
        "fasb": {},
        "fasb_fixed_strength": {"adaptive": False},
        "fasb_no_backtrack": {"backtrack": False},
        "after_question": {"after_question": True},
    }
    if name not in variants:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    return FASB(alpha, threshold, backtrack_tokens, **variants[name], **options)


# --------------------------------------------------------------------------- traces


@dataclass
class Step:
    """One decoding step of one prompt.

    ``p_true`` is the tracker's reading at the position fed in this step (the prompt's
    last token at step 0, then the previous token), i.e. the state from which ``token``
    was chosen. ``strength`` is the steering applied to that position.
    """

    step: int
    token_id: int
    token: str
    p_true: float | None
    strength: float
    checked: bool = False
    kept: bool = True


@dataclass
class GenerationTrace:
    """What happened while generating one prompt, for reading, plotting and JSON."""

    prompt: str
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    answer: str
    policy: str
    mode: str
    steps: list[Step] = field(default_factory=list)
    trigger_step: int | None = None
    trigger_p_true: float | None = None
    strength: float = 0.0
    backtracks: list[dict[str, Any]] = field(default_factory=list)
    discarded_ids: list[int] = field(default_factory=list)
    discarded_text: str = ""
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def triggered(self) -> bool:
        return self.trigger_step is not None

    @property
    def p_true(self) -> list[float | None]:
        """The tracker's reading at every step, discarded steps included."""
        return [step.p_true for step in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationTrace:
        steps = [Step(**step) for step in data.get("steps", [])]
        return cls(**{**data, "steps": steps})


def extract_answer(text: str) -> str:
    """The answer in a QA-format continuation, as the paper extracts it.

    Everything from the next ``"Q:"`` on is cut; the rest after the first ``"A:"`` is kept.
    """
    answer = text.strip().split(QA_STOP)[0].strip()
    if "A:" in answer:
        answer = answer.split("A:")[1].strip()
    return answer


# --------------------------------------------------------------------------- the loop


@dataclass
class _Row:
    """The decoding state of one prompt."""

    prompt_ids: list[int]
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    strength: float = 0.0
    triggers: int = 0
    segment_start: int = 0  # first token of the current segment (for checks)
    kept_steps: list[int] = field(default_factory=list)  # the step of each kept token
    done: bool = False
    stop_reason: str = ""
    trace: dict[str, Any] = field(default_factory=dict)


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


class _Decoder:
    """Runs one step of the model for every row; cached and reference variants."""

    def __init__(self, model: TransformerBridge, rows: list[_Row]) -> None:
        self.model = model
        self.rows = rows
        self.pad_id = pad_token_id(model)
        self.device = model_device(model)

    def prepare(self) -> None:
        """Work done once before decoding, outside the hooks."""

    def step(self) -> Tensor:
        """Feed each row's next input; return the logits at each row's last position."""
        raise NotImplementedError

    def backtrack(self, index: int, n_keep: int) -> None:
        """Row ``index`` keeps its first ``n_keep`` tokens; the last kept one is re-fed."""
        raise NotImplementedError


class _ReferenceDecoder(_Decoder):
    """The authors' loop: the whole sequence, every step, no cache."""

    def step(self) -> Tensor:
        sequences = [row.prompt_ids + row.tokens for row in self.rows]
        ids, mask = pad(sequences, pad_id=self.pad_id, side="left", device=self.device)
        return forward(self.model, ids, mask)[:, -1]

    def backtrack(self, index: int, n_keep: int) -> None:
        del self.rows[index].tokens[n_keep:]


@dataclass
class PromptCache:
    """Every prompt of a batch but its last token, run once, to start several runs from.

    Decoding under any policy starts by feeding each prompt's last token (where steering
    may already apply); the rest of the prompt is the same work whatever the policy.
    ``generate(..., prompt_cache=cache)`` starts from a copy instead of recomputing it,
    which saves a prompt's worth of compute per policy when comparing policies.
    """

    prompt_ids: list[list[int]]
    mask: Tensor  # [batch, longest prompt - 1], left padded
    cache: Any  # HuggingFace DynamicCache; None when every prompt is a single token

    @classmethod
    def build(
        cls, model: TransformerBridge, prompts: Sequence[str], *, prepend_bos: bool | None = None
    ) -> PromptCache:
        prompt_ids = tokenize(model, list(prompts), prepend_bos=prepend_bos)
        return cls.from_ids(model, prompt_ids)

    @classmethod
    def from_ids(cls, model: TransformerBridge, prompt_ids: list[list[int]]) -> PromptCache:
        device = model_device(model)
        heads = [ids[:-1] for ids in prompt_ids]
        if not any(heads):
            return cls(
                prompt_ids, torch.zeros(len(heads), 0, dtype=torch.long, device=device), None
            )
        ids, mask = pad(heads, pad_id=pad_token_id(model), side="left", device=device)
        with torch.inference_mode():
            _, cache = forward(model, ids, mask, use_cache=True)
        return cls(prompt_ids, mask, cache)


class _CachedDecoder(_Decoder):
    """A KV cache over physical columns; discarded columns are masked out (and cropped
    from the cache when they are at its end for every row)."""

    def __init__(
        self, model: TransformerBridge, rows: list[_Row], prompt_cache: PromptCache | None
    ) -> None:
        super().__init__(model, rows)
        self.prompt_cache = prompt_cache
        self.cache: Any = None
        self.mask: Tensor | None = None
        # the physical column of each row's prompt end and generated tokens fed so far
        self.columns: list[list[int]] = []

    def prepare(self) -> None:
        """Start from the prompts but their last tokens: a copy of the shared cache, or
        computed here. Runs before any hook is set: no steering touches these positions."""
        if self.prompt_cache is None:  # this decoder's own: used as it is, not copied
            start = PromptCache.from_ids(self.model, [row.prompt_ids for row in self.rows])
            self.cache, self.mask = start.cache, start.mask
        else:
            self.cache = copy.deepcopy(self.prompt_cache.cache)
            self.mask = self.prompt_cache.mask.clone()
        self.columns = [[] for _ in self.rows]

    def step(self) -> Tensor:
        assert self.mask is not None, "prepare() first"
        column = self.mask.shape[1]
        feed, live = [], []
        for row, columns in zip(self.rows, self.columns, strict=True):
            if row.done:
                feed.append(self.pad_id)
                live.append(0)
                continue
            feed.append(row.tokens[-1] if row.tokens else row.prompt_ids[-1])
            live.append(1)
            columns.append(column)
        ids = torch.tensor(feed, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, torch.tensor(live, device=self.device)[:, None]], 1)
        logits, self.cache = forward(
            self.model, ids, self.mask, past_key_values=self.cache, use_cache=True
        )
        return logits[:, -1]

    def backtrack(self, index: int, n_keep: int) -> None:
        row, columns = self.rows[index], self.columns[index]
        del row.tokens[n_keep:]
        # columns[0] holds the prompt's last token, columns[j + 1] generated token j;
        # every column from the last kept token's on is dropped, as it is fed again.
        for column in columns[n_keep:]:
            self.mask[index, column] = 0
        del columns[n_keep:]
        self._crop_masked_tail()

    def _crop_masked_tail(self) -> None:
        live = self.mask.any(dim=0).tolist()
        tail = 0
        while tail < len(live) and not live[len(live) - 1 - tail]:
            tail += 1
        if tail:
            self.cache.crop(-tail)
            self.mask = self.mask[:, : self.mask.shape[1] - tail]


def _check_policy(policy: Policy, steering: Steering | None) -> Tracker | None:
    if isinstance(policy, FixedSteering | FASB) and steering is None:
        raise ValueError(f"the {policy.name} policy needs a steering artifact")
    if steering is None:
        return None
    return steering.tracker(policy.tracker if isinstance(policy, FASB) else "probe")


def _steering_hooks(
    policy: Policy, steering: Steering | None, strengths: Tensor
) -> list[tuple[str, Callable[..., Tensor]]]:
    if isinstance(policy, CAASteering):
        return policy.caa.hooks(strengths, positions="last")
    if isinstance(policy, FixedSteering | FASB) and steering is not None:
        return steering.hooks(strengths, positions="last")
    return []


def _capture_hooks(
    tracker: Tracker | None, captured: dict[int, Tensor]
) -> list[tuple[str, Callable[..., Tensor]]]:
    """Hooks keeping the anchored layers' ``hook_z`` at the last position, unsteered."""
    if tracker is None:
        return []

    def capture(z: Tensor, hook: Any) -> Tensor:
        captured[int(hook.name.split(".")[1])] = z[:, -1]
        return z

    return [(hook_z_name(layer), capture) for layer in sorted({h.layer for h in tracker.heads})]


def _should_check(policy: FASB, row: _Row, ending: bool) -> bool:
    if row.triggers >= policy.max_backtracks:
        return False
    if policy.after_question:
        return len(row.tokens) == 1
    return len(row.tokens) - row.segment_start >= policy.backtrack_tokens or ending


def _segment_p_true(row: _Row) -> float:
    values = [row.steps[i].p_true for i in row.kept_steps[row.segment_start :]]
    return sum(values) / len(values)  # type: ignore[arg-type]


class _Loop:
    """The token loop over a batch: decode, track, let the policy decide, stop."""

    def __init__(
        self,
        model: TransformerBridge,
        prompts: list[str],
        policy: Policy,
        steering: Steering | None,
        config: GenerationConfig,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.model, self.policy, self.config = model, policy, config
        self.tokenizer = model.tokenizer
        self.tracker = _check_policy(policy, steering)
        device = model_device(model)
        sampling = config.temperature > 0
        prompt_ids = tokenize(model, prompts, prepend_bos=config.prepend_bos)
        if prompt_cache is not None and prompt_cache.prompt_ids != prompt_ids:
            raise ValueError("the prompt cache was built for other prompts")
        self.rows = [
            _Row(ids, _row_generator(prompt, config, device) if sampling else None)
            for prompt, ids in zip(prompts, prompt_ids, strict=True)
        ]
        self.decoder: _Decoder = (
            _CachedDecoder(model, self.rows, prompt_cache)
            if config.mode == "cached"
            else _ReferenceDecoder(model, self.rows)
        )
        base = policy.alpha if isinstance(policy, FixedSteering | CAASteering) else 0.0
        self.strengths = torch.full((len(self.rows),), float(base), device=device)
        for row in self.rows:
            row.strength = base
        self.captured: dict[int, Tensor] = {}
        self.hooks = _capture_hooks(self.tracker, self.captured) + _steering_hooks(
            policy, steering, self.strengths
        )

    def run(self) -> list[GenerationTrace]:
        start = time.perf_counter()
        n_steps = 0
        self.decoder.prepare()
        with torch.inference_mode(), self.model.hooks(fwd_hooks=self.hooks):
            while not all(row.done for row in self.rows):
                logits = self.decoder.step()
                p_true = self._p_true()
                tokens = _sample(logits, self.rows, self.config)
                for index, row in enumerate(self.rows):
                    if not row.done:
                        self._advance(index, row, tokens[index], p_true[index])
                n_steps += 1
        seconds = time.perf_counter() - start
        generated = sum(len(row.steps) for row in self.rows)
        timings = {
            "seconds": round(seconds, 4),
            "steps": n_steps,
            "batch_size": len(self.rows),
            "tokens_per_second": round(generated / seconds, 2) if seconds else 0.0,
        }
        return [self._trace(row, timings) for row in self.rows]

    def _p_true(self) -> list[float | None]:
        if self.tracker is None:
            return [None] * len(self.rows)
        z = torch.stack([self.captured[h.layer][:, h.head] for h in self.tracker.heads], dim=1)
        return self.tracker.p_true(z.float()).tolist()

    def _advance(self, index: int, row: _Row, token: int, p_true: float | None) -> None:
        row.steps.append(
            Step(len(row.steps), token, self.tokenizer.decode([token]), p_true, row.strength)
        )
        row.kept_steps.append(len(row.steps) - 1)
        row.tokens.append(token)
        reason = self._stop_reason(row, token)
        if isinstance(self.policy, FASB) and _should_check(self.policy, row, bool(reason)):
            row.steps[-1].checked = True
            value = _segment_p_true(row) if self.policy.running_mean else p_true
            if value is not None and value < self.policy.threshold:
                self._trigger(index, row, value)
                return
        if reason:
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

    def _trigger(self, index: int, row: _Row, p_true: float) -> None:
        policy = self.policy
        assert isinstance(policy, FASB)
        strength = policy.strength(p_true)
        row.strength = strength
        self.strengths[index] = strength
        row.triggers += 1
        generated = len(row.tokens)
        if policy.after_question:
            n_keep = 0
        elif policy.backtrack:
            back = policy.backtrack_tokens
            n_keep = generated - back if generated > back else 0
        else:
            n_keep = generated
        discarded = row.tokens[n_keep:]
        for step_index in row.kept_steps[n_keep:]:
            row.steps[step_index].kept = False
        del row.kept_steps[n_keep:]
        if n_keep < generated:
            self.decoder.backtrack(index, n_keep)
        row.segment_start = n_keep
        event = {
            "step": len(row.steps) - 1,
            "p_true": p_true,
            "strength": strength,
            "kept_tokens": n_keep,
            "discarded_ids": discarded,
        }
        row.trace.setdefault("backtracks", []).append(event)

    def _trace(self, row: _Row, timings: dict[str, float]) -> GenerationTrace:
        decode = self.tokenizer.decode
        events = row.trace.get("backtracks", [])
        discarded = [token for event in events for token in event["discarded_ids"]]
        text = decode(row.tokens, skip_special_tokens=True)
        return GenerationTrace(
            prompt=decode(row.prompt_ids, skip_special_tokens=False),
            prompt_ids=row.prompt_ids,
            output_ids=list(row.tokens),
            text=text,
            answer=extract_answer(text),
            policy=self.policy.name,
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
        )


def generate(
    model: TransformerBridge,
    prompts: str | Sequence[str],
    *,
    policy: Policy | None = None,
    steering: Steering | None = None,
    config: GenerationConfig | None = None,
    prompt_cache: PromptCache | None = None,
) -> list[GenerationTrace]:
    """Generate a continuation of every prompt under ``policy``, as one batch.

    Args:
        prompts: prompt texts (see :meth:`fasb_lens.data.PromptFormat.generation_prompt`
            or :func:`fasb_lens.models.chat_prompt`); a batch gives the same tokens as each
            prompt alone.
        policy: :class:`NoSteering` (default), :class:`FixedSteering`, :class:`FASB` or
            :class:`CAASteering`; see :func:`make_policy`.
        steering: the anchored heads' vectors and tracker; with :class:`NoSteering` it is
            only used to report ``p_true``.
        config: decoding settings and the execution mode.
        prompt_cache: :class:`PromptCache` of these prompts, to share the prompt's compute
            between several calls (cached mode; the reference loop recomputes anyway).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts to generate from")
    if steering is not None:
        steering.check_model(model)
    loop = _Loop(
        model,
        list(prompts),
        policy or NoSteering(),
        steering,
        config or GenerationConfig(),
        prompt_cache,
    )
    return loop.run()
