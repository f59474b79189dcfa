"""Parity of ``reference``-mode generation with an independent copy of the authors' loop.

The FASB authors generate answers with a hand-written loop (``tqa_run_answers`` in their
``FASB_utils.py``, with ``lt_modulated_vector_add`` from ``validation/FASB.py`` as the
intervention). :func:`authors_loop` below re-implements that loop from its description
with nothing but torch and transformers - a plain HuggingFace model and
``forward_pre_hook``s on ``self_attn.o_proj``, no ``fasb_lens`` - and the tests check that
``generate(..., config=GenerationConfig(mode="reference"))`` agrees with it on the tiny
random Llama: the same final tokens, the same readings, the same trigger and strength.

The authors' loop, in words: greedy decoding of up to ``max_new_tokens`` tokens, every
step running the whole sequence (no KV cache). The reading of a step is ``p_true`` = the
mean over the anchored heads of ``sigmoid(w . z + b)``, where ``z`` is the head's slice of
``o_proj``'s input at the last position of the sequence fed in that step (the state from
which that step's token was chosen). After a token is appended, a check happens once at
least ``backtrack_tokens`` tokens exist, at the last step of the budget, or when the
token is EOS. At the first check below ``threshold``: strength ``r = alpha * (1 - p_true)``;
drop the last ``backtrack_tokens`` tokens if more than that many exist, all of them
otherwise; then generate the rest of the budget with ``r * sigma_k * d_k`` added to head
``k``'s ``o_proj`` input at the last position only, stopping at EOS, with no more checks.
Without a trigger the unsteered tokens stand.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

# fasb_lens builds the other side of each comparison; the re-implementation of the
# authors' loop below (load_hf, authors_loop) uses none of it.
from fasb_lens._types import Head
from fasb_lens.generation import GenerationConfig, GenerationTrace, generate
from fasb_lens.models import ModelShape, load_model, model_id, tokenize
from fasb_lens.policies import FASB
from fasb_lens.steering import Steering

# --------------------------------------------------------------------------- the authors' loop
# Only torch and transformers from here to the comparison.


@dataclass
class AuthorsRun:
    """What the authors' loop produced for one prompt."""

    output_ids: list[int]  # the final generated tokens (kept unsteered + steered)
    p_true: list[float]  # the reading at every unsteered step, the trigger step included
    trigger_step: int | None  # the step whose check triggered (0-based), or None
    strength: float  # alpha * (1 - p_true) at the trigger, 0 without one
    kept_tokens: int  # unsteered tokens kept at the trigger (0 without one)


def load_hf(folder: Path) -> tuple[torch.nn.Module, Any]:
    """A plain HF causal LM and its tokenizer from ``folder``, never touched by
    TransformerLens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def authors_loop(
    model: torch.nn.Module,
    prompt_ids: list[int],
    *,
    heads: list[tuple[int, int]],
    directions: Tensor,
    scales: Tensor,
    probe_weight: Tensor,
    probe_bias: Tensor,
    alpha: float,
    threshold: float,
    backtrack_tokens: int,
    max_new_tokens: int,
    eos_id: int,
) -> AuthorsRun:
    """Greedy FASB generation as the authors' loop does it (Llama-style HF model)."""
    config = model.config
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    # layer -> o_proj's input at the last position, split into heads: [n_heads, d_head]
    readings: dict[int, Tensor] = {}
    steer = {"strength": 0.0, "on": False}
    by_layer: dict[int, list[tuple[int, Tensor]]] = {}
    for k, (layer, head) in enumerate(heads):
        by_layer.setdefault(layer, []).append((head, scales[k] * directions[k]))

    def make_hook(layer: int):
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]):
            x = args[0]  # [batch, pos, n_heads * d_head]
            readings[layer] = x[0, -1].detach().reshape(n_heads, d_head).clone()
            if not steer["on"]:
                return None
            x = x.clone()
            split = x.view(*x.shape[:-1], n_heads, d_head)
            for head, vector in by_layer[layer]:
                split[:, -1, head] += steer["strength"] * vector.to(x.dtype)
            return (x, *args[1:])

        return hook

    def next_token(ids: list[int]) -> int:
        """One step: the whole sequence, no cache; greedy."""
        logits = model(torch.tensor([ids])).logits
        return int(logits[0, -1].argmax())

    def class_probabilities() -> tuple[float, float]:
        """(mean P(false), mean P(true)) over the anchored heads, as predict_proba gives."""
        z = torch.stack([readings[layer][head] for layer, head in heads]).double()
        true = torch.sigmoid((z * probe_weight.double()).sum(-1) + probe_bias.double())
        return float((1 - true).mean()), float(true.mean())

    handles = [
        model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(make_hook(layer))
        for layer in sorted(by_layer)
    ]
    try:
        with torch.no_grad():
            ids = list(prompt_ids)
            generated: list[int] = []
            p_true: list[float] = []
            trigger_step, strength = None, 0.0
            for step in range(max_new_tokens):
                token = next_token(ids)
                p_false, p_now = class_probabilities()
                p_true.append(p_now)
                ids.append(token)
                generated.append(token)
                checks = (
                    len(generated) >= backtrack_tokens
                    or step == max_new_tokens - 1
                    or token == eos_id
                )
                if checks and p_now < threshold:
                    trigger_step, strength = step, alpha * p_false
                    # (the authors write generated[:-s], which drops everything when
                    # s = 0; no test here uses s = 0)
                    if len(generated) > backtrack_tokens:
                        generated = generated[: len(generated) - backtrack_tokens]
                    else:
                        generated = []
                    break
                if token == eos_id:
                    break
            kept = len(generated)
            if trigger_step is not None:
                steer.update(on=True, strength=strength)
                ids = list(prompt_ids) + generated
                for _ in range(max_new_tokens - kept):
                    token = next_token(ids)
                    ids.append(token)
                    generated.append(token)
                    if token == eos_id:
                        break
    finally:
        for handle in handles:
            handle.remove()
    kept = kept if trigger_step is not None else 0
    return AuthorsRun(generated, p_true, trigger_step, strength, kept)


# --------------------------------------------------------------------------- the comparison

# Anchored heads in no particular order, over three layers, two of them in layer 1.
HEADS = ((1, 3), (0, 1), (3, 2), (1, 0))
# Strength alpha * (1 - p_true) ~ 0.7 times scales ~ 1: steering changes the tiny model's
# tokens without drowning them; from alpha ~ 2 on, it repeats one token whatever it sees,
# and the tests could no longer tell last-position steering of a recomputed sequence
# (the authors') from steering carried in a KV cache (fasb_lens' cached mode).
ALPHA = 1.0
MAX_NEW_TOKENS = 12
PROMPTS = [
    "Q: Is the Great Wall of China visible from space? A:",
    "The quick brown fox",
    "Premise: the man broke his toe.",
    "Q: How long do goldfish remember things? A:",
]
NEVER, ALWAYS = 0.0, 1.1  # thresholds no reading is below / every reading is below
EOS_STEP = 2  # in the early-EOS model, the step whose token is EOS


@dataclass
class Side:
    """One model folder loaded twice: as fasb_lens' bridge and as a plain HF model."""

    model: Any  # TransformerBridge
    hf_model: torch.nn.Module
    hf_tokenizer: Any


def both_sides(folder: Path) -> Side:
    # Two separate loads: the bridge rewrites its own HF model in place.
    return Side(load_model(folder, device="cpu"), *load_hf(folder))


@pytest.fixture(scope="module")
def side(tiny_llama, tiny_llama_folder: Path) -> Side:
    return Side(tiny_llama, *load_hf(tiny_llama_folder))


def random_steering(model, seed: int = 1234) -> Steering:
    """Seeded random vectors and probes on the heads of ``HEADS`` (scales of order 1)."""
    cfg = model.cfg
    shape = ModelShape(cfg.n_layers, cfg.n_heads, cfg.d_head)
    generator = torch.Generator().manual_seed(seed)
    k, d_head = len(HEADS), shape.d_head

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=generator)

    directions = randn(k, d_head)
    return Steering(
        heads=tuple(Head(*head) for head in HEADS),
        directions=directions / directions.norm(dim=-1, keepdim=True),
        scales=0.5 + torch.rand(k, generator=generator),
        trackers={  # probes whose readings move from token to token
            "probe": {"weight": 5 * randn(k, d_head), "bias": 0.1 * randn(k)},
            "prototype": {"true_mean": randn(k, d_head), "false_mean": randn(k, d_head)},
        },
        val_accuracy=torch.rand(shape.n_layers, shape.n_heads, generator=generator),
        model_id=model_id(model),
        shape=shape,
    )


@pytest.fixture(scope="module")
def steering(tiny_llama) -> Steering:
    return random_steering(tiny_llama)


def run_authors(
    side: Side,
    steering: Steering,
    prompt: str,
    *,
    threshold: float,
    backtrack_tokens: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> AuthorsRun:
    """The authors' loop on fasb_lens' prompt ids, with the steering's numbers."""
    return authors_loop(
        side.hf_model,
        tokenize(side.model, [prompt])[0],
        heads=[(head.layer, head.head) for head in steering.heads],
        directions=steering.directions,
        scales=steering.scales,
        probe_weight=steering.trackers["probe"]["weight"],
        probe_bias=steering.trackers["probe"]["bias"],
        alpha=ALPHA,
        threshold=threshold,
        backtrack_tokens=backtrack_tokens,
        max_new_tokens=max_new_tokens,
        eos_id=side.hf_tokenizer.eos_token_id,
    )


def run_both(
    side: Side,
    steering: Steering,
    prompt: str,
    *,
    threshold: float,
    backtrack_tokens: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> tuple[GenerationTrace, AuthorsRun]:
    """The same prompt ids, numbers and settings through fasb_lens and the authors' loop."""
    trace = generate(
        side.model,
        [prompt],
        policy=FASB(alpha=ALPHA, threshold=threshold, backtrack_tokens=backtrack_tokens),
        steering=steering,
        config=GenerationConfig(max_new_tokens=max_new_tokens, stop_strings=(), mode="reference"),
    )[0]
    assert trace.prompt_ids == tokenize(side.model, [prompt])[0]
    assert side.hf_tokenizer.eos_token_id == side.model.tokenizer.eos_token_id
    settings = {"threshold": threshold, "backtrack_tokens": backtrack_tokens}
    return trace, run_authors(side, steering, prompt, **settings, max_new_tokens=max_new_tokens)


@pytest.fixture(scope="module")
def unsteered(side: Side, steering: Steering) -> Callable[[str], AuthorsRun]:
    """The authors' loop on a prompt without a trigger - its tokens and every step's
    reading, which no ``backtrack_tokens`` changes - computed once per prompt."""
    runs: dict[str, AuthorsRun] = {}

    def run(prompt: str) -> AuthorsRun:
        if prompt not in runs:
            runs[prompt] = run_authors(side, steering, prompt, threshold=NEVER, backtrack_tokens=1)
            assert runs[prompt].trigger_step is None
        return runs[prompt]

    return run


def assert_parity(trace: GenerationTrace, authors: AuthorsRun) -> None:
    """Same final tokens, readings, trigger, kept tokens and strength.

    How the readings line up: in reference mode, step ``i`` of fasb_lens feeds the prompt
    plus every kept token and reads ``hook_z`` (= ``o_proj``'s input split into heads) at
    the last position of that sequence - the prompt's last token at step 0, token ``i - 1``
    afterwards - so ``trace.steps[i].p_true`` is the state from which ``steps[i].token_id``
    was chosen. Nothing is dropped before the trigger, so for every ``i`` up to and
    including ``trigger_step`` (every step, without a trigger) it is the reading of the
    authors' iteration ``pos == i``, taken from the forward pass that chose token ``i``.
    ``trace.steps`` keeps the discarded steps and then goes on with the steered
    regeneration (steps ``trigger_step + 1`` on), where the authors read nothing.
    """
    n_unsteered = len(authors.p_true)
    steps = trace.steps
    assert trace.output_ids == authors.output_ids
    assert trace.trigger_step == authors.trigger_step
    assert trace.strength == pytest.approx(authors.strength, rel=1e-5, abs=1e-5)
    assert len(steps) >= n_unsteered
    torch.testing.assert_close(
        torch.tensor(trace.p_true[:n_unsteered], dtype=torch.float64),
        torch.tensor(authors.p_true, dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )
    assert all(step.strength == 0.0 for step in steps[:n_unsteered])
    unsteered_ids = [step.token_id for step in steps[:n_unsteered]]
    if authors.trigger_step is None:
        assert len(steps) == n_unsteered
        assert trace.output_ids == unsteered_ids
        assert trace.backtracks == []
        return
    assert [event["step"] for event in trace.backtracks] == [authors.trigger_step]
    assert trace.trigger_p_true == pytest.approx(authors.p_true[-1], abs=1e-5)
    kept = authors.kept_tokens
    assert trace.backtracks[0]["kept_tokens"] == kept
    assert trace.backtracks[0]["discarded_ids"] == unsteered_ids[kept:]
    assert trace.output_ids[:kept] == unsteered_ids[:kept]
    steered = steps[n_unsteered:]
    assert [step.token_id for step in steered] == trace.output_ids[kept:]
    assert all(step.strength == trace.strength for step in steered)


# (a) No trigger: the unsteered answer stands, reading by reading.
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_no_trigger_matches_the_authors_loop(side, steering, prompt):
    trace, authors = run_both(side, steering, prompt, threshold=NEVER, backtrack_tokens=4)
    assert_parity(trace, authors)
    assert authors.trigger_step is None and trace.strength == 0.0
    assert len(authors.p_true) == len(trace.output_ids) == MAX_NEW_TOKENS


# (b) A trigger at the first check: s tokens exist, which is not more than s, so all go.
@pytest.mark.parametrize("backtrack_tokens", [1, 4])
@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_trigger_at_the_first_check_matches(side, steering, unsteered, prompt, backtrack_tokens):
    trace, authors = run_both(
        side, steering, prompt, threshold=ALWAYS, backtrack_tokens=backtrack_tokens
    )
    assert_parity(trace, authors)
    assert authors.trigger_step == backtrack_tokens - 1
    assert authors.kept_tokens == 0
    assert authors.strength == pytest.approx(ALPHA * (1 - authors.p_true[-1]))
    assert len(trace.output_ids) == MAX_NEW_TOKENS  # the whole budget, regenerated
    plain = unsteered(prompt)
    assert trace.output_ids != plain.output_ids, "steering changed nothing: a vacuous test"
    # The comparison can tell the modes apart: the cached mode keeps the steered keys and
    # values of the regenerated tokens, and its answer differs from the authors'.
    cached = generate(
        side.model,
        [prompt],
        policy=FASB(alpha=ALPHA, threshold=ALWAYS, backtrack_tokens=backtrack_tokens),
        steering=steering,
        config=GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, stop_strings=(), mode="cached"),
    )[0]
    assert cached.output_ids != authors.output_ids


# (c) A trigger at a later check: the last s tokens go, the ones before them stay.
@pytest.mark.parametrize("later", [1, 2])  # the 2nd or the 3rd check triggers
def test_trigger_at_a_later_check_keeps_the_earlier_tokens(side, steering, unsteered, later):
    backtrack_tokens = 3
    first_check = backtrack_tokens - 1  # the step at which s tokens exist
    target = first_check + later
    for prompt in PROMPTS:
        readings = unsteered(prompt).p_true
        earlier = min(readings[first_check:target])
        if earlier - readings[target] > 1e-3:  # well clear of float noise on both sides
            break
    else:
        pytest.fail(f"no prompt reads lower at check {later + 1} than at the checks before")
    threshold = (earlier + readings[target]) / 2
    trace, authors = run_both(
        side, steering, prompt, threshold=threshold, backtrack_tokens=backtrack_tokens
    )
    assert_parity(trace, authors)
    assert authors.trigger_step == target
    assert authors.kept_tokens == target + 1 - backtrack_tokens > 0
    assert authors.strength == pytest.approx(ALPHA * (1 - readings[target]), abs=1e-4)
    plain = unsteered(prompt)
    assert trace.output_ids != plain.output_ids, "steering changed nothing: a vacuous test"


# (d) s at least the budget: the only check is at the last step, and everything goes.
@pytest.mark.parametrize("backtrack_tokens", [MAX_NEW_TOKENS, MAX_NEW_TOKENS + 5])
def test_trigger_at_the_last_step_regenerates_everything(
    side, steering, unsteered, backtrack_tokens
):
    prompt = PROMPTS[0]
    trace, authors = run_both(
        side, steering, prompt, threshold=ALWAYS, backtrack_tokens=backtrack_tokens
    )
    assert_parity(trace, authors)
    assert authors.trigger_step == MAX_NEW_TOKENS - 1
    assert authors.kept_tokens == 0
    assert len(trace.backtracks[0]["discarded_ids"]) == MAX_NEW_TOKENS
    assert len(trace.steps) == 2 * MAX_NEW_TOKENS
    plain = unsteered(prompt)
    assert trace.output_ids != plain.output_ids, "steering changed nothing: a vacuous test"


@pytest.fixture(scope="module")
def early_eos(unsteered, tiny_llama_folder: Path, tmp_path_factory) -> Side:
    """The tiny Llama with the token it generates at step ``EOS_STEP`` for ``PROMPTS[0]``
    made its tokenizer's EOS: the random model rarely picks the real EOS, so this is how
    an answer ends early here. Same weights; a separate folder, loaded on both sides."""
    tokens = unsteered(PROMPTS[0]).output_ids
    eos = tokens[EOS_STEP]
    assert eos not in tokens[:EOS_STEP]
    folder = tmp_path_factory.mktemp("tiny_llama_early_eos")
    shutil.copytree(tiny_llama_folder, folder, dirs_exist_ok=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    tokenizer.save_pretrained(folder)
    early = both_sides(folder)
    assert early.model.tokenizer.eos_token_id == early.hf_tokenizer.eos_token_id == eos
    return early


# (d') EOS before s tokens exist: a check at EOS; a trigger there drops every token.
def test_eos_before_the_first_check(early_eos, steering):
    trace, authors = run_both(early_eos, steering, PROMPTS[0], threshold=NEVER, backtrack_tokens=4)
    assert_parity(trace, authors)
    assert len(trace.output_ids) == EOS_STEP + 1 and trace.stop_reason == "eos"
    assert trace.steps[-1].checked  # fasb_lens checked at EOS, as the authors do

    trace, authors = run_both(early_eos, steering, PROMPTS[0], threshold=ALWAYS, backtrack_tokens=4)
    assert_parity(trace, authors)
    assert authors.trigger_step == EOS_STEP
    assert authors.kept_tokens == 0
    assert trace.backtracks[0]["discarded_ids"] == [s.token_id for s in trace.steps[: EOS_STEP + 1]]
