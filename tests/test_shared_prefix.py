"""A prefix run once gives what each prompt run whole gives; MC offsets; the context tracker."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fasb_lens.activations import collect_head_activations
from fasb_lens.data import context_prompts, load_mini_truthfulqa, load_prompt_format
from fasb_lens.generation import GenerationConfig, generate
from fasb_lens.models import tokenize
from fasb_lens.policies import FASB, Unsteered
from fasb_lens.prefix import SharedPrefix
from fasb_lens.scoring import PrefixScorer


@pytest.fixture(scope="module")
def setting(tiny_llama):
    fmt = load_prompt_format()
    questions = load_mini_truthfulqa()[:5]
    prompts = [fmt.generation_prompt(q.question) for q in questions]
    shared = SharedPrefix.build(tiny_llama, tokenize(tiny_llama, prompts))
    return fmt, questions, prompts, shared


def test_the_shared_prefix_is_the_common_start(tiny_llama, setting) -> None:
    fmt, _, prompts, shared = setting
    ids = tokenize(tiny_llama, prompts)
    assert shared is not None and all(shared.starts(row) for row in ids)
    assert len(shared.ids) >= len(tokenize(tiny_llama, [fmt.preamble])[0]) - 2
    assert SharedPrefix.build(tiny_llama, [[5, 6, 7], [8, 9, 10]]) is None
    assert SharedPrefix.build(tiny_llama, [[5, 6, 7], [5, 6, 7]]).ids == (5,)  # 2 left each
    assert SharedPrefix.build(tiny_llama, []) is None


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_generation_from_the_shared_prefix(tiny_llama, tiny_anchoring, setting, threshold) -> None:
    _, _, prompts, shared = setting
    policy = FASB(8.0, threshold, 2)  # threshold 1.0: always triggers; 0.0: never
    config = GenerationConfig(max_new_tokens=6)
    steering = tiny_anchoring.steering
    whole = generate(tiny_llama, prompts, policy=policy, steering=steering, config=config)
    parts = generate(
        tiny_llama, prompts, policy=policy, steering=steering, config=config, shared=shared
    )
    for a, b in zip(whole, parts, strict=True):
        assert a.output_ids == b.output_ids and a.triggered == b.triggered
        torch.testing.assert_close(
            torch.tensor([p for p in a.p_true]),
            torch.tensor([p for p in b.p_true]),
            atol=1e-4,
            rtol=0,
        )
    assert any(t.triggered for t in whole) == (threshold == 1.0)


def test_scoring_from_the_shared_prefix(tiny_llama, tiny_anchoring, setting) -> None:
    fmt, questions, _, shared = setting
    prefix, _ = fmt.answer_prompt(questions[0].question, "")
    answers = [" " + a for a in questions[0].correct_answers + questions[0].incorrect_answers]
    for policy in (Unsteered(), FASB(8.0, 1.0, 1)):
        whole = PrefixScorer(tiny_llama, prefix, steering=tiny_anchoring.steering)
        parts = PrefixScorer(tiny_llama, prefix, steering=tiny_anchoring.steering, shared=shared)
        for a, b in zip(whole.score(answers, policy), parts.score(answers, policy), strict=True):
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
            assert (a.triggered, a.trigger_token) == (b.triggered, b.trigger_token)


def test_activations_from_the_shared_prefix(tiny_llama, setting) -> None:
    fmt, questions, _, _ = setting
    prompts = context_prompts(questions, fmt, answers="csv")
    shared = SharedPrefix.build(tiny_llama, tokenize(tiny_llama, [p.text for p in prompts]))
    assert shared is not None
    whole = collect_head_activations(tiny_llama, prompts, progress=False, batch_size=4)
    parts = collect_head_activations(
        tiny_llama, prompts, progress=False, batch_size=4, shared=shared
    )
    torch.testing.assert_close(whole.z, parts.z, atol=1e-4, rtol=1e-4)
    assert torch.equal(whole.labels, parts.labels)


def test_the_answer_offset_moves_checks_one_token_later(tiny_llama, tiny_anchoring) -> None:
    """With the authors' offset (1) a check needs one more answer token: an always-triggering
    FASB triggers one token later, and never on a one-token answer."""
    steering, s = tiny_anchoring.steering, 1
    always = FASB(8.0, 1.0, s)
    described = PrefixScorer(tiny_llama, "Q: Where? A:", steering=steering, answer_offset=0)
    released = PrefixScorer(tiny_llama, "Q: Where? A:", steering=steering, answer_offset=1)
    long_answer = [" the river runs far away"]
    early = described.score(long_answer, always)[0]
    late = released.score(long_answer, always)[0]
    assert early.triggered and late.triggered
    assert late.trigger_token == early.trigger_token + 1
    one = [[42]]  # a one-token answer
    plain = released.score_ids(one, Unsteered())[0]
    checked = released.score_ids(one, always)[0]
    assert not checked.triggered and checked.log_prob == pytest.approx(plain.log_prob, abs=1e-6)
    with pytest.raises(ValueError, match="answer_offset must be >= 0"):
        PrefixScorer(tiny_llama, "Q: A:", answer_offset=-1)


def test_the_context_tracker_reads_its_own_probes(tiny_llama, tiny_anchoring, tmp_path) -> None:
    steering = tiny_anchoring.steering
    prompt = load_prompt_format().generation_prompt("Where is the river?")
    config = GenerationConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="holds no context tracker"):
        generate(tiny_llama, prompt, policy=Unsteered(tracker="context"), steering=steering)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(steering.top_k, steering.shape.d_head, generator=generator)
    context = {"weight": weight, "bias": torch.zeros(steering.top_k)}
    inside = replace(steering, trackers={**steering.trackers, "context": context})
    probe = generate(tiny_llama, prompt, policy=Unsteered(), steering=inside, config=config)[0]
    context = generate(
        tiny_llama, prompt, policy=Unsteered(tracker="context"), steering=inside, config=config
    )[0]
    assert probe.output_ids == context.output_ids  # reading is not steering
    assert probe.p_true != context.p_true
    inside.save(tmp_path)
    loaded = type(inside).load(tmp_path)
    assert torch.equal(loaded.trackers["context"]["weight"], weight)
    assert torch.equal(loaded.subset(inside.heads[:2]).trackers["context"]["weight"], weight[:2])
