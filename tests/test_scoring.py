"""Multiple-choice scoring: the cached, batched scorer equals a naive full forward per answer."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest
import torch

from fasb_lens import Head, scoring, tree_forward
from fasb_lens.activations import collect_residual_activations
from fasb_lens.anchoring import build_caa
from fasb_lens.data import load_mini_truthfulqa, probing_prompts
from fasb_lens.generation import GenerationConfig, generate
from fasb_lens.models import forward, hook_z_name, tokenize
from fasb_lens.multiple_choice import mc_metrics
from fasb_lens.policies import CAA, FASB, ITI, RandomDirections, Unsteered, make_policy
from fasb_lens.scoring import AnswerScore, PrefixScorer

PREFIX = "Be true.\n\nQ: Is the Great Wall of China visible from space?\nA:"
ANSWERS = [" No, it is too narrow.", " Yes.", " Yes, it is easy to see from the Moon.", " No"]


@pytest.fixture(scope="module")
def steering(tiny_anchoring):
    return tiny_anchoring.steering


def naive(model, answer: str, hooks=()) -> tuple[float, list[int]]:
    """Full forward of prefix + answer, one answer at a time: its summed log-prob."""
    prefix = tokenize(model, [PREFIX])[0]
    cont = tokenize(model, [answer], prepend_bos=False)[0]
    ids = torch.tensor([prefix + cont])
    with torch.inference_mode(), model.hooks(fwd_hooks=list(hooks)):
        logits = forward(model, ids)
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)
    total = sum(float(log_probs[len(prefix) - 1 + t, token]) for t, token in enumerate(cont))
    return total, [len(prefix)]


def readings(model, steering, answer: str) -> list[float]:
    """p_true at every position of prefix + answer, from a plain forward."""
    ids = torch.tensor(
        [tokenize(model, [PREFIX])[0] + tokenize(model, [answer], prepend_bos=False)[0]]
    )
    _, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_z"))
    z = torch.stack([cache[hook_z_name(h.layer)][0, :, h.head] for h in steering.heads], dim=1)
    return steering.tracker().p_true(z).tolist()


def above_block_zero(model, steering):
    """The steering's vectors moved onto heads above block 0 (the tiny model's anchored
    heads all sit in block 0), so that steered passes can start higher up."""
    layers = model.cfg.n_layers - 1
    moved = [Head(1 + k % layers, k % model.cfg.n_heads) for k in range(steering.top_k)]
    return dataclasses.replace(steering, heads=tuple(moved))


def record_starts(monkeypatch) -> list[int | None]:
    """The block each scoring forward starts at (``None``: the first), as they run."""
    starts: list[int | None] = []
    real = tree_forward.final_residual

    def spy(*args, start_at_layer=None, **kwargs):
        starts.append(start_at_layer)
        return real(*args, start_at_layer=start_at_layer, **kwargs)

    monkeypatch.setattr(tree_forward, "final_residual", spy)
    return starts


def test_plain_and_fixed_scores_equal_naive(tiny_llama, steering) -> None:
    scorer = PrefixScorer(tiny_llama, PREFIX, steering=steering)
    start = len(tokenize(tiny_llama, [PREFIX])[0])
    plain = scorer.score(ANSWERS)
    fixed = scorer.score(ANSWERS, ITI(alpha=30.0))
    for answer, p, f in zip(ANSWERS, plain, fixed, strict=True):
        assert p.log_prob == pytest.approx(naive(tiny_llama, answer)[0], abs=1e-4)
        hooks = steering.hooks(30.0, positions=start)
        assert f.log_prob == pytest.approx(naive(tiny_llama, answer, hooks)[0], abs=1e-4)
        if p.n_tokens > 1:  # a first token is predicted from the prompt, which is not steered
            assert p.log_prob != pytest.approx(f.log_prob, abs=1e-3)
        else:
            assert p.log_prob == f.log_prob
    assert scorer.score(ANSWERS)[0].log_prob == plain[0].log_prob  # the cache is reused intact


def test_fasb_scores_equal_naive(tiny_llama, steering) -> None:
    scorer = PrefixScorer(tiny_llama, PREFIX, steering=steering)
    start = len(tokenize(tiny_llama, [PREFIX])[0])
    back = 2
    for answer in ANSWERS:
        values = readings(tiny_llama, steering, answer)[start:]
        threshold = sorted(values)[len(values) // 2] + 1e-6  # some answers trigger, not all
        result = scorer.score(
            [answer], FASB(alpha=30.0, threshold=threshold, backtrack_tokens=back)
        )[0]
        checks = range(min(back, len(values) - 1), len(values))
        hit = next((j for j in checks if values[j] < threshold), None)
        if hit is None:
            assert not result.triggered
            assert result.log_prob == pytest.approx(naive(tiny_llama, answer)[0], abs=1e-4)
            continue
        assert (result.triggered, result.trigger_token) == (True, hit)
        assert result.p_true == pytest.approx(values[hit], abs=1e-5)
        strength = 30.0 * (1 - values[hit])
        hooks = steering.hooks(strength, positions=start + max(hit - back, 0))
        assert result.log_prob == pytest.approx(naive(tiny_llama, answer, hooks)[0], abs=1e-4)


def test_answers_scored_together_equal_answers_scored_alone(tiny_llama, steering) -> None:
    """One forward runs every answer as a token tree: answers that begin alike share those
    tokens only while their steering agrees, so each answer's score, trigger and strength
    are what scoring it alone gives, whatever the others do."""
    answers = [*ANSWERS, " Yes, it is.", " No, it is too narrow to see.", " No, it is"]
    ids = tokenize(tiny_llama, answers, prepend_bos=False)
    assert len({tuple(a[:2]) for a in ids}) < len(ids)  # some answers begin alike
    scorer = PrefixScorer(tiny_llama, PREFIX, steering=steering)
    values = sorted(v for row in scorer.readings(ids) for v in row[2:])

    def alone(policy):
        return [
            PrefixScorer(tiny_llama, PREFIX, steering=steering).score([answer], policy)[0]
            for answer in answers
        ]

    def fasb(threshold: float) -> FASB:
        return FASB(alpha=30.0, threshold=threshold, backtrack_tokens=1)

    # the threshold at which the answers trigger at the most different tokens
    threshold = max(
        values[1:-1:2], key=lambda t: len({r.trigger_token for r in alone(fasb(t + 1e-6))})
    )
    for policy in (Unsteered(), ITI(alpha=20.0), fasb(threshold + 1e-6)):
        together = scorer.score(answers, policy)
        for a, b in zip(together, alone(policy), strict=True):
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
            assert (a.triggered, a.trigger_token) == (b.triggered, b.trigger_token)
            assert a.strength == pytest.approx(b.strength, abs=1e-5)
    assert len({r.trigger_token for r in together}) >= 3  # untriggered, and two tokens


def test_after_question_and_caa(tiny_llama, steering) -> None:
    scorer = PrefixScorer(tiny_llama, PREFIX, steering=steering)
    start = len(tokenize(tiny_llama, [PREFIX])[0])
    p = scorer.prefix_p_true
    always = scorer.score(ANSWERS, FASB(alpha=20.0, threshold=1.1, after_question=True))
    never = scorer.score(ANSWERS, FASB(alpha=20.0, threshold=0.0, after_question=True))
    for answer, a, n in zip(ANSWERS, always, never, strict=True):
        assert a.triggered and not n.triggered and a.strength == pytest.approx(20.0 * (1 - p))
        hooks = steering.hooks(a.strength, positions=start)
        assert a.log_prob == pytest.approx(naive(tiny_llama, answer, hooks)[0], abs=1e-4)
        assert n.log_prob == pytest.approx(naive(tiny_llama, answer)[0], abs=1e-4)
    residual = collect_residual_activations(
        tiny_llama, probing_prompts(load_mini_truthfulqa()[:8]), layers=[2], progress=False
    )
    caa = build_caa(residual, 2)
    scored = scorer.score(ANSWERS, CAA(caa, 5.0))
    for answer, result in zip(ANSWERS, scored, strict=True):
        hooks = caa.hooks(5.0, positions=start)
        assert result.log_prob == pytest.approx(naive(tiny_llama, answer, hooks)[0], abs=1e-4)


def test_a_detector_drops_what_it_triggers_on_and_steers_nothing(tiny_llama, steering) -> None:
    scorer = PrefixScorer(tiny_llama, PREFIX, steering=steering)
    plain = scorer.score(ANSWERS)
    always = scorer.score(ANSWERS, FASB(alpha=20.0, threshold=1.1, detect_only=True))
    never = scorer.score(ANSWERS, FASB(alpha=20.0, threshold=0.0, detect_only=True))
    for p, a, n in zip(plain, always, never, strict=True):
        assert a.dropped and a.triggered and a.strength == 0.0 and not n.dropped
        assert a.log_prob == pytest.approx(p.log_prob, abs=1e-5)  # nothing was steered
        assert n.log_prob == pytest.approx(p.log_prob, abs=1e-5)
    fasb = scorer.score(ANSWERS, FASB(alpha=20.0, threshold=1.1))
    assert [a.trigger_token for a in always] == [f.trigger_token for f in fasb]


def test_dropped_answers_cannot_be_chosen() -> None:
    from fasb_lens.multiple_choice import _kept_scores

    scored = {
        "true": AnswerScore("true", -3.0, 2),
        "false": AnswerScore("false", -1.0, 2, triggered=True, dropped=True),
        "other": AnswerScore("other", -2.0, 2),
    }
    kept = _kept_scores(["true", "false", "other"], scored)
    assert kept == {"true": -3.0, "false": -math.inf, "other": -2.0}
    assert mc_metrics([kept["true"]], [kept["false"], kept["other"]])["mc1"] == 0.0
    assert mc_metrics([kept["true"]], [kept["false"]])["mc2"] == 1.0
    everything = {k: AnswerScore(k, v.log_prob, 2, dropped=True) for k, v in scored.items()}
    assert _kept_scores(["true", "false"], everything) == {"true": -3.0, "false": -1.0}


def test_policy_needs_steering(tiny_llama) -> None:
    scorer = PrefixScorer(tiny_llama, PREFIX)
    assert len(scorer.score(ANSWERS, Unsteered())) == 4
    with pytest.raises(ValueError, match="needs a steering artifact"):
        scorer.score(ANSWERS, FASB())


def test_mc_metrics() -> None:
    metrics = mc_metrics([-1.0, -3.0], [-2.0, -5.0])
    assert metrics["mc1"] == 1.0 and metrics["mc3"] == 0.5
    expected = (math.exp(-1) + math.exp(-3)) / (
        math.exp(-1) + math.exp(-3) + math.exp(-2) + math.exp(-5)
    )
    assert metrics["mc2"] == pytest.approx(expected)
    assert mc_metrics([-900.0], [-901.0])["mc2"] == pytest.approx(1 / (1 + math.exp(-1)))
    assert mc_metrics([-3.0], [-2.0])["mc1"] == 0.0
    with pytest.raises(ValueError, match="at least one true and one false"):
        mc_metrics([], [-1.0])


def test_steering_the_prompt_end_reaches_first_tokens(tiny_llama, steering) -> None:
    """With steer_prompt_end, the position predicting each answer's first token is steered
    too, so even one-token answers move."""
    scorer = PrefixScorer(tiny_llama, PREFIX, steering=steering, steer_prompt_end=True)
    start = len(tokenize(tiny_llama, [PREFIX])[0])
    plain = scorer.score(ANSWERS)
    fixed = scorer.score(ANSWERS, ITI(alpha=30.0))
    for answer, p, f in zip(ANSWERS, plain, fixed, strict=True):
        hooks = steering.hooks(30.0, positions=start - 1)
        assert f.log_prob == pytest.approx(naive(tiny_llama, answer, hooks)[0], abs=1e-4)
        assert p.log_prob != pytest.approx(f.log_prob, abs=1e-3)
    back = 2
    for answer in ANSWERS:
        values = readings(tiny_llama, steering, answer)[start:]
        policy = FASB(alpha=30.0, threshold=1.1, backtrack_tokens=back)
        result = scorer.score([answer], policy)[0]
        hit = min(back, len(values) - 1)
        hooks = steering.hooks(30.0 * (1 - values[hit]), positions=start - 1 + max(hit - back, 0))
        assert result.trigger_token == hit
        assert result.log_prob == pytest.approx(naive(tiny_llama, answer, hooks)[0], abs=1e-4)


def test_readings_match_an_independent_forward(tiny_llama, steering) -> None:
    scorer = PrefixScorer(tiny_llama, PREFIX, steering=steering)
    ids = tokenize(tiny_llama, ANSWERS, prepend_bos=False)
    prefix_length = len(tokenize(tiny_llama, [PREFIX])[0])
    for answer, values in zip(ANSWERS, scorer.readings(ids), strict=True):
        plain = readings(tiny_llama, steering, answer)
        assert values == pytest.approx(plain[prefix_length - 1 :], abs=1e-5)


def test_generation_and_scoring_decide_alike(tiny_llama, steering) -> None:
    """Both drivers hand the same readings to the same decision engine.

    Scoring counts the reading at answer token ``t`` as ``t``; generation counts it as the
    tokens existing after the next one is chosen, ``t + 2`` (fasb_lens.scoring's
    docstring). So on the tokens of an unsteered generation, scoring with
    ``backtrack_tokens = s`` must find the same trigger reading, strength and kept tokens
    as generation with ``s + 2``.
    """
    prompt = "Q: Is the Great Wall of China visible from space? A:"
    budget = GenerationConfig(max_new_tokens=14, stop_at_eos=False)
    plain = generate(tiny_llama, [prompt], steering=steering, config=budget)[0]
    scorer = PrefixScorer(tiny_llama, prompt, steering=steering)
    scored = scorer.readings([plain.output_ids])[0]  # prompt end, then each answer token
    generated = plain.p_true  # step i reads the prompt end (i = 0), then token i - 1
    assert scored[:-1] == pytest.approx(generated, abs=1e-5)
    s = 2
    candidates = scored[1 + s : -2]  # answer tokens s .. last - 2: checks before the end
    lowest = min(range(len(candidates)), key=candidates.__getitem__)
    t = s + lowest
    threshold = candidates[lowest] + 1e-4
    assert all(value >= threshold for value in scored[1 + s : 1 + t])  # t is the first below
    score = scorer.score_ids([plain.output_ids], FASB(10.0, threshold, s))[0]
    trace = generate(
        tiny_llama,
        [prompt],
        steering=steering,
        config=budget,
        policy=FASB(10.0, threshold, s + 2),
    )[0]
    assert score.trigger_token == t and trace.trigger_step == t + 1
    assert score.p_true == pytest.approx(trace.trigger_p_true, abs=1e-5)
    assert score.strength == pytest.approx(trace.strength, abs=1e-4)
    assert trace.backtracks[0]["kept_tokens"] == t - s  # scoring steers from answer token t - s


def test_a_scorer_on_fewer_heads_shares_its_passes(tiny_llama, steering) -> None:
    """Calibration compares numbers of anchored heads on one scorer: the subset's scores
    equal a fresh scorer's with the subset steering."""
    answers = [" the river", " a small red boat", " no"]
    wide = PrefixScorer(tiny_llama, "Q: Where? A:", steering=steering)
    wide.score(answers, FASB(6.0, 1.0, 1))
    fewer = steering.subset(steering.heads[:2])
    shared = wide.with_steering(fewer)
    fresh = PrefixScorer(tiny_llama, "Q: Where? A:", steering=fewer)
    for policy in (ITI(6.0), FASB(6.0, 1.0, 1)):
        for a, b in zip(shared.score(answers, policy), fresh.score(answers, policy), strict=True):
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-5)
            assert (a.triggered, a.trigger_token) == (b.triggered, b.trigger_token)
    assert shared._plain is wide._plain
    with pytest.raises(ValueError, match="subset of the scorer's heads"):
        fresh.with_steering(steering)


def test_steered_passes_start_from_the_unsteered_pass(tiny_llama, steering, monkeypatch) -> None:
    """Below the lowest block steering changes, a steered pass computes exactly what the
    unsteered pass did; once that has run, steered passes start from the residual stream
    it kept there, and score as forwards through every block do."""
    upper = above_block_zero(tiny_llama, steering)
    lowest = upper.first_layer
    assert lowest == 1
    answers = [*ANSWERS, " Yes, it is.", " No, it is too narrow to see."]
    residual = collect_residual_activations(
        tiny_llama, probing_prompts(load_mini_truthfulqa()[:8]), layers=[3], progress=False
    )
    caa = build_caa(residual, 3)
    rows = PrefixScorer(tiny_llama, PREFIX, steering=upper).readings(
        tokenize(tiny_llama, answers, prepend_bos=False)
    )
    threshold = statistics.median(min(row[2:]) for row in rows if row[2:])  # half trigger
    policies = [
        ITI(alpha=20.0),
        CAA(caa, 4.0),
        FASB(alpha=30.0, threshold=threshold, backtrack_tokens=1),
        FASB(alpha=30.0, threshold=1.1, backtrack_tokens=2, adaptive=False),
    ]
    starts = record_starts(monkeypatch)
    warm = PrefixScorer(tiny_llama, PREFIX, steering=upper)
    warm.score(answers)
    assert warm.prefix_p_true is not None  # the prompt's last token, run once, first
    with monkeypatch.context() as patched:  # the reference runs every block
        patched.setattr(PrefixScorer, "_start_layer", lambda self, *args: None)
        full = [
            PrefixScorer(tiny_llama, PREFIX, steering=upper).score(answers, p) for p in policies
        ]
    for policy, reference in zip(policies, full, strict=True):
        starts.clear()
        scored = warm.score(answers, policy)
        assert starts and set(starts) == {lowest}, policy.name
        for a, b in zip(scored, reference, strict=True):
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
            assert (a.triggered, a.trigger_token) == (b.triggered, b.trigger_token)
            assert a.strength == pytest.approx(b.strength, abs=1e-5)
    assert any(r.triggered for r in full[2]) and not all(r.triggered for r in full[2])


def test_policies_scored_together_equal_each_alone(tiny_llama, steering, monkeypatch) -> None:
    """Several policies advance together, each round of their passes one forward (answers
    of different policies share a node only where the same steering, or none, reached
    it), and every policy's scores are what scoring it alone gives."""
    upper = above_block_zero(tiny_llama, steering)
    answers = [*ANSWERS, " Yes, it is.", " No, it is too narrow to see."]
    residual = collect_residual_activations(
        tiny_llama, probing_prompts(load_mini_truthfulqa()[:8]), layers=[0], progress=False
    )
    rows = PrefixScorer(tiny_llama, PREFIX, steering=upper).readings(
        tokenize(tiny_llama, answers, prepend_bos=False)
    )
    threshold = statistics.median(min(row[2:]) for row in rows if row[2:])
    fasb = FASB(alpha=30.0, threshold=threshold, backtrack_tokens=1)
    policies = [
        Unsteered(),
        ITI(alpha=20.0),
        CAA(build_caa(residual, 0), 4.0),  # below the anchored heads: a forward of its own
        fasb,
        FASB(alpha=30.0, threshold=threshold, backtrack_tokens=1, adaptive=False),
        FASB(alpha=30.0, threshold=threshold, backtrack_tokens=1, max_backtracks=3),
        FASB(alpha=30.0, threshold=threshold, backtrack_tokens=1, backtrack=False),
        FASB(alpha=20.0, threshold=rows[0][0] + 1e-6, after_question=True),
        make_policy("fasb_random", alpha=30.0, threshold=threshold, backtrack_tokens=1),
    ]
    forwards = record_starts(monkeypatch)
    alone = [PrefixScorer(tiny_llama, PREFIX, steering=upper).score(answers, p) for p in policies]
    forwards.clear()
    ids = tokenize(tiny_llama, answers, prepend_bos=False)
    together = PrefixScorer(tiny_llama, PREFIX, steering=upper).score_policies(ids, policies)
    for policy, mine, reference in zip(policies, together, alone, strict=True):
        for a, b in zip(mine, reference, strict=True):
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4), policy.name
            assert (a.triggered, a.trigger_token) == (b.triggered, b.trigger_token), policy.name
            assert a.strength == pytest.approx(b.strength, abs=1e-5)
            assert a.p_true == pytest.approx(b.p_true, abs=1e-5)
    triggered = [r.triggered for r in alone[3]]
    assert any(triggered) and not all(triggered)
    # the prompt end and the unsteered pass, then per round one forward from block 1 and
    # one from block 0 (CAA steers below the anchored heads, in the first round only)
    assert forwards[:2] == [None, None] and forwards[2:4] in ([1, None], [None, 1])
    assert set(forwards[4:]) == {1} and len(forwards) <= 2 + 2 + 3


def test_questions_scored_together_equal_each_alone(tiny_llama, steering, monkeypatch) -> None:
    """Several questions' passes as the rows of shared forwards (prompts of different
    lengths, trees of different widths, both padded) score as each question alone,
    decisions included; a row that saw another's padding would move its numbers. A
    question's own random directions keep its steered passes out of shared forwards."""
    upper = above_block_zero(tiny_llama, steering)  # steered passes start above block 0
    prefixes = [
        PREFIX,
        "Q: Is the sky green?\nA:",
        "Be true.\n\nQ: What happens if you swallow gum? Think about it slowly.\nA:",
    ]
    answer_sets = [ANSWERS, ANSWERS[1:3], [*ANSWERS, " It stays inside you for seven years."]]
    ids = [tokenize(tiny_llama, answers, prepend_bos=False) for answers in answer_sets]
    rows = [
        row
        for prefix, cont in zip(prefixes, ids, strict=True)
        for row in PrefixScorer(tiny_llama, prefix, steering=upper).readings(cont)
    ]
    threshold = statistics.median(min(row[2:]) for row in rows if row[2:])  # about half trigger
    fasb = FASB(alpha=30.0, threshold=threshold, backtrack_tokens=1)
    shared = [Unsteered(), ITI(alpha=20.0), fasb]
    forwards: list[list[set[int]]] = []  # each forward's rows: the interventions steering it
    real = tree_forward.forward_together

    def spy(model, requests):
        forwards.append([{id(i) for i, _ in request.steer} for request in requests])
        return real(model, requests)

    def scorers() -> list[PrefixScorer]:
        return [PrefixScorer(tiny_llama, prefix, steering=upper) for prefix in prefixes]

    # controls drawn per question, one steering from the start (its forward would mix hooks)
    own = [
        [*shared, RandomDirections(ITI(alpha=20.0), 3 + q), RandomDirections(fasb, 3 + q)]
        for q in range(3)
    ]
    for policies in ([shared] * 3, own):
        alone = [s.score_policies(c, p) for s, c, p in zip(scorers(), ids, policies, strict=True)]
        forwards.clear()
        with monkeypatch.context() as patched:
            patched.setattr(tree_forward, "forward_together", spy)
            jobs = [
                scoring.ScoringJob(s, c, p)
                for s, c, p in zip(scorers(), ids, policies, strict=True)
            ]
            together = scoring.score_together(jobs, rows=2)
        shared_rows = [rows for rows in forwards if len(rows) > 1]
        if policies is not own:  # steered passes shared forwards too
            assert any(rows[0] for rows in shared_rows)
        assert all(all(row == rows[0] for row in rows) for rows in shared_rows)  # same hooks
        triggered = []
        for mine, theirs in zip(together, alone, strict=True):
            for scored, reference in zip(mine, theirs, strict=True):
                for a, b in zip(scored, reference, strict=True):
                    assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
                    assert (a.triggered, a.trigger_token) == (b.triggered, b.trigger_token)
                    assert a.strength == pytest.approx(b.strength, abs=1e-5)
                    triggered.append(a.triggered)
        assert any(triggered) and not all(triggered)
    with pytest.raises(ValueError, match="rows must be >= 1"):
        scoring.score_together(jobs, rows=0)
