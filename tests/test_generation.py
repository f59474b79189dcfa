"""The generation loop: identities, backtracking, both modes, batching, traces."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.activations import collect_residual_activations
from fasb_lens.anchoring import build_caa
from fasb_lens.data import load_mini_truthfulqa, probing_prompts
from fasb_lens.generation import GenerationConfig, GenerationTrace, extract_answer, generate
from fasb_lens.models import forward, hook_z_name, tokenize
from fasb_lens.policies import CAA, FASB, ITI, RandomDirections, Unsteered, make_policy

PROMPTS = [
    "Q: Is the Great Wall of China visible from space? A:",
    "The quick brown fox",
    "I have no comment. Q: How long do goldfish remember things? A: Goldfish",
]
BUDGET = GenerationConfig(max_new_tokens=12, stop_at_eos=False)
REFERENCE = GenerationConfig(max_new_tokens=12, stop_at_eos=False, mode="reference")


@pytest.fixture(scope="module")
def steering(tiny_anchoring):
    return tiny_anchoring.steering


@pytest.fixture(scope="module")
def two_layer_steering(steering):
    """Vectors on one head of layer 0 and one of layer 3, with probes more sensitive than
    the tiny model's own, so that the reading shows small changes of the activations."""
    heads = (Head(0, 0), Head(3, 1))
    k = len(heads)
    return replace(
        steering,
        heads=heads,
        directions=steering.directions[:k],
        scales=steering.scales[:k],
        spread=None,
        trackers={
            "probe": {
                "weight": 5 * steering.directions[:k],
                "bias": steering.trackers["probe"]["bias"][:k],
            }
        },
    )


def ids(traces: list[GenerationTrace]) -> list[list[int]]:
    return [trace.output_ids for trace in traces]


def greedy_by_hand(model, prompt: str, n: int) -> list[int]:
    """Greedy decoding with full recomputes and no fasb_lens loop at all."""
    tokens = tokenize(model, [prompt])[0]
    out = []
    with torch.inference_mode():
        for _ in range(n):
            logits = forward(model, torch.tensor([tokens + out]))
            out.append(int(logits[0, -1].argmax()))
    return out


def test_plain_decoding_is_greedy(tiny_model) -> None:
    traces = generate(tiny_model, PROMPTS, config=BUDGET)
    assert ids(traces) == [greedy_by_hand(tiny_model, p, 12) for p in PROMPTS]
    assert all(t.stop_reason == "max_new_tokens" and not t.triggered for t in traces)
    assert all(p is None for p in traces[0].p_true)  # no steering given: nothing tracked


def test_modes_agree_without_steering(tiny_llama, steering) -> None:
    cached = generate(tiny_llama, PROMPTS, steering=steering, config=BUDGET)
    reference = generate(tiny_llama, PROMPTS, steering=steering, config=REFERENCE)
    assert ids(cached) == ids(reference)
    for a, b in zip(cached, reference, strict=True):
        assert a.p_true == pytest.approx(b.p_true, abs=1e-5)
        assert all(0 < p < 1 for p in a.p_true)


@pytest.mark.parametrize("policy", [FASB(alpha=5.0, threshold=0.0), FASB(alpha=0.0, threshold=1.1)])
def test_fasb_identities(tiny_llama, steering, policy) -> None:
    """Threshold 0 never triggers; alpha 0 steers with nothing: both equal greedy."""
    plain = generate(tiny_llama, PROMPTS, steering=steering, config=BUDGET)
    fasb = generate(tiny_llama, PROMPTS, steering=steering, policy=policy, config=BUDGET)
    assert ids(fasb) == ids(plain)
    assert all(t.triggered for t in fasb) is (policy.threshold > 1)


@pytest.mark.parametrize("mode", ["cached", "reference"])
def test_threshold_above_one_triggers_at_the_first_check(tiny_llama, steering, mode) -> None:
    config = GenerationConfig(max_new_tokens=12, stop_at_eos=False, mode=mode)
    plain = generate(tiny_llama, PROMPTS, steering=steering, config=config)
    policy = FASB(alpha=8.0, threshold=1.1, backtrack_tokens=3)
    for trace, greedy in zip(
        generate(tiny_llama, PROMPTS, steering=steering, policy=policy, config=config),
        plain,
        strict=True,
    ):
        assert trace.trigger_step == 2  # the first check: once 3 tokens exist
        assert [s.checked for s in trace.steps].count(True) == 1  # one check, then none
        assert trace.backtracks[0]["kept_tokens"] == 0  # 3 tokens exist, all 3 dropped
        assert trace.discarded_ids == greedy.output_ids[:3]
        assert trace.strength == pytest.approx(8.0 * (1 - trace.trigger_p_true))
        assert len(trace.output_ids) == 12 and len(trace.steps) == 15
        assert [s.kept for s in trace.steps] == [False] * 3 + [True] * 12
        assert [s.strength > 0 for s in trace.steps] == [False] * 3 + [True] * 12


def test_kept_prefix_equals_greedy(tiny_llama, steering) -> None:
    """A trigger after more than backtrack_tokens tokens keeps greedy's own prefix."""
    back = 3
    plain = generate(tiny_llama, PROMPTS, steering=steering, config=BUDGET)
    kept_any = False
    for prompt, greedy in zip(PROMPTS, plain, strict=True):
        readings = greedy.p_true
        # the lowest reading among the checks makes the first check below it trigger there
        first_check = back - 1
        lowest = min(range(first_check, len(readings)), key=lambda i: readings[i])
        policy = FASB(alpha=8.0, threshold=readings[lowest] + 1e-7, backtrack_tokens=back)
        trace = generate(tiny_llama, prompt, steering=steering, policy=policy, config=BUDGET)[0]
        assert trace.trigger_step == lowest
        kept = max(lowest + 1 - back, 0) if lowest + 1 > back else 0
        assert trace.backtracks[0]["kept_tokens"] == kept
        assert trace.output_ids[:kept] == greedy.output_ids[:kept]
        assert trace.discarded_ids == greedy.output_ids[kept : lowest + 1]
        kept_any |= kept > 0
    assert kept_any


def test_without_backtracking_tokens_are_kept(tiny_llama, steering) -> None:
    plain = generate(tiny_llama, PROMPTS, steering=steering, config=BUDGET)
    traces = generate(
        tiny_llama,
        PROMPTS,
        steering=steering,
        config=BUDGET,
        policy=make_policy("fasb_no_backtrack", alpha=8.0, threshold=1.1, backtrack_tokens=5),
    )
    for trace, greedy in zip(traces, plain, strict=True):
        assert trace.trigger_step == 4 and trace.discarded_ids == []
        assert trace.output_ids[:5] == greedy.output_ids[:5]
        assert [s.strength > 0 for s in trace.steps] == [False] * 5 + [True] * 7


def test_running_mean_and_several_backtracks(tiny_llama, steering) -> None:
    plain = generate(tiny_llama, PROMPTS, steering=steering, config=BUDGET)
    traces = generate(
        tiny_llama,
        PROMPTS,
        steering=steering,
        config=BUDGET,
        policy=FASB(
            alpha=50.0, threshold=1.1, backtrack_tokens=4, running_mean=True, max_backtracks=2
        ),
    )
    for trace, greedy in zip(traces, plain, strict=True):
        first, second = trace.backtracks
        assert (first["step"], first["kept_tokens"]) == (3, 0)
        assert (second["step"], second["kept_tokens"]) == (7, 0)  # 4 new tokens, checked again
        assert trace.discarded_ids[:4] == greedy.output_ids[:4]
        assert [s.checked for s in trace.steps].count(True) == 2


def test_after_question_decides_once(tiny_llama, steering) -> None:
    plain = generate(tiny_llama, PROMPTS, steering=steering, config=BUDGET)
    traces = generate(
        tiny_llama,
        PROMPTS,
        steering=steering,
        config=BUDGET,
        policy=make_policy("after_question", alpha=8.0, threshold=1.1),
    )
    for trace, greedy in zip(traces, plain, strict=True):
        assert trace.trigger_step == 0 and trace.trigger_p_true == greedy.p_true[0]
        assert trace.discarded_ids == greedy.output_ids[:1]
        assert [s.checked for s in trace.steps].count(True) == 1


def test_batched_equals_one_by_one(tiny_llama, steering) -> None:
    policy = FASB(alpha=8.0, threshold=0.4995, backtrack_tokens=3)
    batched = generate(tiny_llama, PROMPTS, steering=steering, policy=policy, config=BUDGET)
    alone = [
        generate(tiny_llama, p, steering=steering, policy=policy, config=BUDGET)[0] for p in PROMPTS
    ]
    assert ids(batched) == ids(alone)
    assert [t.trigger_step for t in batched] == [t.trigger_step for t in alone]
    for a, b in zip(batched, alone, strict=True):
        assert a.p_true == pytest.approx(b.p_true, abs=1e-4)


@pytest.mark.parametrize(
    "policies",
    [
        [ITI(2.0), ITI(30.0), ITI(2.0)],
        [FASB(8.0, 0.4995, 3), FASB(30.0, 0.4995, 3), FASB(0.0, 0.4995, 3)],
        [RandomDirections(ITI(30.0), seed) for seed in (1, 2, 3)],
    ],
    ids=["strengths", "fasb strengths", "control draws"],
)
def test_a_policy_per_prompt_equals_each_alone(tiny_llama, steering, policies) -> None:
    """Rows under different strengths (or a control's different draws) share one batch
    and generate what each would alone."""
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    batched = generate(tiny_llama, prompts, steering=steering, policy=policies, config=BUDGET)
    alone = [
        generate(tiny_llama, p, steering=steering, policy=policy, config=BUDGET)[0]
        for p, policy in zip(prompts, policies, strict=True)
    ]
    assert ids(batched) == ids(alone)
    assert len({tuple(t.output_ids) for t in alone}) > 1  # the rows do differ
    for a, b in zip(batched, alone, strict=True):
        assert a.p_true == pytest.approx(b.p_true, abs=1e-4)
        assert a.strength == b.strength


def test_a_policy_per_prompt_is_checked(tiny_llama, steering) -> None:
    with pytest.raises(ValueError, match="2 policies for 3 prompts"):
        generate(tiny_llama, PROMPTS[:3], steering=steering, policy=[ITI(1.0)] * 2, config=BUDGET)
    with pytest.raises(ValueError, match="one tracker"):
        mixed = [FASB(8.0, 0.5, 3), replace(FASB(8.0, 0.5, 3), tracker="prototype")]
        generate(tiny_llama, PROMPTS[:2], steering=steering, policy=mixed, config=BUDGET)
    with pytest.raises(ValueError, match="cannot mix"):
        generate(tiny_llama, PROMPTS[:2], steering=steering, policy=[ITI(1.0), Unsteered()])


def test_cached_and_reference_where_they_agree_and_differ(tiny_llama, two_layer_steering) -> None:
    """Both steer the first token after a trigger identically (only the last position is
    steered in both). From the second steered token on, the cached run's earlier steered
    position sits in the KV cache with its vector, while the reference run recomputes it
    unsteered, so their readings diverge."""
    steering = two_layer_steering  # steer layer 0, track a head of layer 3 too
    policy = ITI(alpha=200.0)
    cached = generate(tiny_llama, PROMPTS, steering=steering, policy=policy, config=BUDGET)
    reference = generate(tiny_llama, PROMPTS, steering=steering, policy=policy, config=REFERENCE)
    for a, b in zip(cached, reference, strict=True):
        assert a.output_ids[0] == b.output_ids[0]
        assert a.p_true[0] == pytest.approx(b.p_true[0], abs=1e-6)
        assert abs(a.p_true[1] - b.p_true[1]) > 1e-5  # float noise is ~1e-7
    one_step = GenerationConfig(max_new_tokens=1, stop_at_eos=False)
    trigger = FASB(alpha=200.0, threshold=1.1, backtrack_tokens=1)
    a = generate(tiny_llama, PROMPTS, steering=steering, policy=trigger, config=one_step)
    b = generate(
        tiny_llama,
        PROMPTS,
        steering=steering,
        policy=trigger,
        config=GenerationConfig(max_new_tokens=1, stop_at_eos=False, mode="reference"),
    )
    assert ids(a) == ids(b) and all(t.triggered for t in a)


def test_steering_touches_only_anchored_heads_at_the_newest_position(tiny_llama, steering) -> None:
    """Record hook_z during a fixed-steering run: at each step only the anchored heads at
    the fed position move, by exactly strength * sigma * d."""
    seen: list[torch.Tensor] = []
    layer = steering.heads[0].layer

    def record(z, hook):
        seen.append(z.detach().clone())
        return z

    with tiny_llama.hooks(fwd_hooks=[]):
        pass
    steered_hooks = steering.hooks(3.0, positions="last") + [(hook_z_name(layer), record)]
    ids_ = torch.tensor(tokenize(tiny_llama, PROMPTS[:1]))
    with torch.inference_mode():
        with tiny_llama.hooks(fwd_hooks=[(hook_z_name(layer), record)]):
            forward(tiny_llama, ids_)
        with tiny_llama.hooks(fwd_hooks=steered_hooks):
            forward(tiny_llama, ids_)
    plain, steered = seen
    delta = steered - plain
    anchored = {h.head: k for k, h in enumerate(steering.heads) if h.layer == layer}
    for head in range(tiny_llama.cfg.n_heads):
        if head in anchored:
            k = anchored[head]
            torch.testing.assert_close(delta[0, -1, head], 3.0 * steering.vectors[k])
            assert torch.equal(delta[0, :-1, head], torch.zeros_like(delta[0, :-1, head]))
        else:
            assert torch.equal(delta[0, :, head], torch.zeros_like(delta[0, :, head]))


def test_stop_strings_and_answers(tiny_llama) -> None:
    config = GenerationConfig(max_new_tokens=30, stop_at_eos=False)
    free = generate(tiny_llama, PROMPTS[0], config=config)[0]
    stop = tiny_llama.tokenizer.decode(free.output_ids[4:6])
    stopped = generate(tiny_llama, PROMPTS[0], config=replace(config, stop_strings=(stop,)))[0]
    assert stopped.stop_reason == "stop_string" and stop in stopped.text
    assert stop not in tiny_llama.tokenizer.decode(stopped.output_ids[:-1])
    assert stopped.output_ids == free.output_ids[: len(stopped.output_ids)]
    reference = generate(
        tiny_llama,
        PROMPTS[0],
        config=GenerationConfig(max_new_tokens=30, stop_strings=(stop,), mode="reference"),
    )[0]
    assert reference.output_ids == free.output_ids  # the authors' loop ignores stop strings
    assert extract_answer("\nA: Nothing happens.\n\nQ: Next?") == "Nothing happens."
    assert extract_answer(" Paris. Q: x") == "Paris."
    assert extract_answer("A: yes A: no") == "yes"


def test_sampling_is_seeded_per_prompt(tiny_llama) -> None:
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3, stop_at_eos=False)
    batch = generate(tiny_llama, PROMPTS, config=config)
    assert ids(batch) == ids(generate(tiny_llama, PROMPTS, config=config))
    assert ids(batch)[1] == generate(tiny_llama, PROMPTS[1], config=config)[0].output_ids
    other = generate(
        tiny_llama,
        PROMPTS,
        config=GenerationConfig(max_new_tokens=8, temperature=1.0, seed=4, stop_at_eos=False),
    )
    assert ids(other) != ids(batch)


def test_caa_policy(tiny_llama) -> None:
    questions = load_mini_truthfulqa()[:10]
    residual = collect_residual_activations(
        tiny_llama, probing_prompts(questions), layers=[1], progress=False
    )
    assert residual.z.shape[1:] == (1, 1, tiny_llama.cfg.d_model)
    caa = build_caa(residual, layer=1)
    plain = generate(tiny_llama, PROMPTS, config=BUDGET)
    zero = generate(tiny_llama, PROMPTS, policy=CAA(caa, 0.0), config=BUDGET)
    strong = generate(tiny_llama, PROMPTS, policy=CAA(caa, 50.0), config=BUDGET)
    assert ids(zero) == ids(plain) and ids(strong) != ids(plain)


def test_traces_serialise(tiny_llama, steering) -> None:
    traces = generate(
        tiny_llama,
        PROMPTS,
        steering=steering,
        config=BUDGET,
        policy=FASB(alpha=4.0, threshold=1.1, backtrack_tokens=3),
    )
    data = json.loads(traces[0].to_json())
    assert {
        "prompt_ids",
        "output_ids",
        "text",
        "steps",
        "trigger_step",
        "discarded_ids",
        "strength",
        "timings",
    } <= set(data)
    assert GenerationTrace.from_dict(data) == traces[0]
    assert data["timings"]["tokens_per_second"] > 0


def test_bad_requests(tiny_llama, steering) -> None:
    with pytest.raises(ValueError, match="fasb policy needs a steering artifact"):
        generate(tiny_llama, PROMPTS, policy=FASB())
    with pytest.raises(ValueError, match="unknown policy 'magic'"):
        make_policy("magic")
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="no prompts"):
        generate(tiny_llama, [])
    assert isinstance(make_policy("none"), Unsteered)
    assert make_policy("fasb_no_backtrack").name == "fasb_no_backtrack"


def test_a_shared_prompt_cache_gives_the_same_tokens(tiny_llama, steering) -> None:
    from fasb_lens.decoding import PromptCache

    cache = PromptCache.build(tiny_llama, PROMPTS)
    for policy in (
        Unsteered(),
        ITI(alpha=8.0),
        FASB(alpha=8.0, threshold=0.4995, backtrack_tokens=3),
    ):
        alone = generate(tiny_llama, PROMPTS, steering=steering, policy=policy, config=BUDGET)
        shared = generate(
            tiny_llama, PROMPTS, steering=steering, policy=policy, config=BUDGET, prompt_cache=cache
        )
        assert ids(shared) == ids(alone)
    with pytest.raises(ValueError, match="built for other prompts"):
        generate(tiny_llama, PROMPTS[:2], config=BUDGET, prompt_cache=cache)
    single = generate(tiny_llama, ["Q"], config=GenerationConfig(max_new_tokens=3))  # one token
    assert len(single[0].output_ids) >= 1


def test_generations_a_policy_never_acts_on_are_read_off_the_unsteered_ones(
    tiny_llama, steering
) -> None:
    """Until FASB triggers it adds nothing: given the unsteered generations, a prompt on
    which it never triggers gets that generation (marked ``reused``), every other prompt
    is generated, and the result equals generating every prompt."""
    from fasb_lens.decoding import PromptCache

    prompts = [*PROMPTS, "Q: What is the capital of France? A:", "Once upon a time"]
    plain = generate(tiny_llama, prompts, steering=steering, config=BUDGET)
    cache = PromptCache.build(tiny_llama, prompts)
    readings = sorted(p for trace in plain for p in trace.p_true)

    def fasb(quantile: float) -> FASB:
        return FASB(
            alpha=8.0, threshold=readings[int(quantile * len(readings))], backtrack_tokens=3
        )

    def mixed(policy) -> bool:
        triggered = [
            t.triggered
            for t in generate(tiny_llama, prompts, steering=steering, policy=policy, config=BUDGET)
        ]
        return any(triggered) and not all(triggered)

    threshold_policy = next(p for p in map(fasb, (0.05, 0.1, 0.2, 0.3, 0.5)) if mixed(p))
    prompt_ends = sorted(trace.p_true[0] for trace in plain)
    after = make_policy("after_question", alpha=8.0, threshold=prompt_ends[2] + 1e-6)
    assert mixed(after)  # both policies reuse some prompts and generate others
    for policy in (threshold_policy, after, ITI(alpha=8.0)):
        fresh = generate(tiny_llama, prompts, steering=steering, policy=policy, config=BUDGET)
        reused = generate(
            tiny_llama,
            prompts,
            steering=steering,
            policy=policy,
            config=BUDGET,
            prompt_cache=cache,
            unsteered=plain,
        )
        assert ids(reused) == ids(fresh)
        for a, b in zip(reused, fresh, strict=True):
            assert (a.trigger_step, a.policy, a.answer) == (b.trigger_step, b.policy, b.answer)
            assert [s.checked for s in a.steps] == [s.checked for s in b.steps]
            assert a.p_true == pytest.approx(b.p_true, abs=1e-5)
        # ITI steers from the start: it never reuses
        assert [t.reused for t in reused] == [policy.decides and not t.triggered for t in fresh]
    read_by_another = [replace(trace, tracker="context") for trace in plain]
    again = generate(
        tiny_llama,
        prompts,
        steering=steering,
        policy=threshold_policy,
        config=BUDGET,
        unsteered=read_by_another,
    )
    assert not any(trace.reused for trace in again)
    with pytest.raises(ValueError, match="2 unsteered generations for 5 prompts"):
        generate(tiny_llama, prompts, steering=steering, config=BUDGET, unsteered=plain[:2])
