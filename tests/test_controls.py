"""Controls that separate detection from steering: random directions, one decision per
question, and the direction's share of a gain."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fasb_lens.anchoring import projection_scales
from fasb_lens.data import load_mini_truthfulqa, load_prompt_format
from fasb_lens.evaluation.summary import direction_shares
from fasb_lens.evaluation.truthfulqa import decide_once
from fasb_lens.evaluation.truthfulqa_calibration import check_reading
from fasb_lens.generation import GenerationConfig, generate
from fasb_lens.multiple_choice import MultipleChoice
from fasb_lens.policies import FASB, ITI, RandomDirections, Unsteered, make_policy


def test_random_directions_keep_heads_and_measure_their_own_scale(tiny_anchoring) -> None:
    steering, tuning = tiny_anchoring.steering, tiny_anchoring.tuning
    # the learnt direction's scale is the tuning activations' spread along it ...
    along = projection_scales(tuning, steering.heads, steering.directions)
    torch.testing.assert_close(along, steering.scales)
    control = make_policy("fasb_random", alpha=8.0, threshold=0.5, backtrack_tokens=2, seed=3)
    assert isinstance(control, RandomDirections) and control.base.name == "fasb"
    assert control.base == FASB(8.0, 0.5, 2)
    random = control.intervention(steering)
    assert random.heads == steering.heads
    # ... and a random direction's is the spread along the random direction
    own = projection_scales(tuning, steering.heads, random.directions)
    torch.testing.assert_close(random.scales, own, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(random.scales, steering.scales)
    older = replace(steering, spread=None).randomized(3)  # an artifact without spreads
    assert torch.equal(older.scales, steering.scales)
    assert torch.equal(older.directions, random.directions)
    torch.testing.assert_close(random.directions.norm(dim=-1), torch.ones(steering.top_k))
    assert not torch.allclose(random.directions, steering.directions)
    again = make_policy("fasb_random", alpha=8.0, seed=3).intervention(steering)
    other = make_policy("fasb_random", alpha=8.0, seed=4).intervention(steering)
    assert torch.equal(random.directions, again.directions)
    assert not torch.equal(random.directions, other.directions)
    assert random.trackers is steering.trackers  # the tracker is untouched
    fixed = make_policy("fixed_random", alpha=5.0, seed=1)
    assert fixed.base == ITI(5.0) and fixed.initial_strength() == 5.0


def test_a_control_decides_like_the_method_and_steers_elsewhere(tiny_llama, tiny_anchoring):
    question = load_mini_truthfulqa()[0]
    choice = MultipleChoice(
        tiny_llama,
        question,
        fmt=load_prompt_format(),
        steering=tiny_anchoring.steering,
        source="csv",
    )
    real = choice.evaluate(FASB(8.0, 1.0, 1))
    control = choice.evaluate(RandomDirections(FASB(8.0, 1.0, 1), seed=0))
    first = [(a["answer"], a["trigger_token"]) for a in real["answers"]]
    assert first == [(a["answer"], a["trigger_token"]) for a in control["answers"]]
    triggered = [i for i, a in enumerate(real["answers"]) if a["triggered"]]
    assert triggered  # something was steered, so the directions can differ
    assert any(
        real["answers"][i]["log_prob"] != pytest.approx(control["answers"][i]["log_prob"])
        for i in triggered
    )


def test_one_decision_per_question(tiny_llama, tiny_anchoring) -> None:
    """The leak-free protocol reads the model's own answer once; every candidate is then
    scored alike (steered from its first token, or not at all)."""
    steering = tiny_anchoring.steering
    prompt = load_prompt_format().generation_prompt("Where is the river?")
    config = GenerationConfig(max_new_tokens=6)
    trace = generate(tiny_llama, prompt, policy=Unsteered(), steering=steering, config=config)[0]
    assert decide_once(FASB(8.0, 0.0, 2), trace) == Unsteered()  # p_true < 0 never happens
    decided = decide_once(FASB(8.0, 1.0, 2), trace)  # p_true < 1 always does
    assert isinstance(decided, ITI)
    # the reading FASB checks first during generation decides, at FASB's strength
    assert decided.alpha == pytest.approx(
        8.0 * (1 - check_reading(FASB(backtrack_tokens=2), trace)), rel=1e-6
    )
    control = decide_once(RandomDirections(FASB(8.0, 1.0, 2), seed=7), trace)
    assert control == RandomDirections(ITI(decided.alpha), seed=7)
    choice = MultipleChoice(
        tiny_llama,
        load_mini_truthfulqa()[0],
        fmt=load_prompt_format(),
        steering=steering,
        source="csv",
    )
    scored = choice.evaluate(decided)["answers"]
    assert {a["strength"] for a in scored} == {decided.alpha}  # every candidate alike


def test_the_direction_share_of_a_gain() -> None:
    def method(mc2: float, pair: float) -> dict:
        return {"mean": {"mc2": mc2, "j x info": {"true_x_info": pair}, "n_mc": 3}}

    summary = {
        "policies": {
            "none": method(0.40, 0.30),
            "fasb": method(0.60, 0.50),
            "fasb_random": method(0.55, 0.20),
            "fixed": method(0.35, 0.40),
            "fixed_random": method(0.38, 0.35),
        },
        "comparisons": [
            {"a": "fasb", "b": "none", "metric": metric, "difference": 0.2, "verdict": "above"}
            for metric in ("mc2", "j x info: true_x_info")
        ],
    }
    shares = direction_shares(summary)
    assert shares["fasb"]["mc2"] == {
        "gain": pytest.approx(0.20),
        "control_gain": pytest.approx(0.15),
        "direction_share": pytest.approx(0.25),
    }
    # the control lost ground: the direction explains more than all of the gain
    assert shares["fasb"]["j x info: true_x_info"]["direction_share"] == pytest.approx(1.5)
    assert shares["fixed"]["mc2"]["direction_share"] is None  # no gain, no share
    unsure = direction_shares({**summary, "comparisons": []})
    assert unsure["fasb"]["mc2"]["direction_share"] is None  # a gain not shown to be real
    assert unsure["fasb"]["mc2"]["gain"] == pytest.approx(0.20)
    assert direction_shares({"policies": {"fasb": method(0.5, 0.5)}}) == {}


def test_the_push_through_w_o_of_learnt_and_random_directions(tiny_llama, tiny_anchoring) -> None:
    from fasb_lens.policies import push_report

    steering = tiny_anchoring.steering
    push = steering.residual_push(tiny_llama)
    head = steering.heads[0]
    w_o = tiny_llama.blocks[head.layer].attn.W_O[head.head].detach()
    expected = (steering.scales[0] * steering.directions[0] @ w_o).norm()
    assert push.shape == (steering.top_k,) and float(push[0]) == pytest.approx(float(expected))
    report = push_report(steering, tiny_llama, draws=4)
    assert report["learnt"] == pytest.approx(float(push.mean()))
    assert report["random"] > 0 and report["draws"] == 4
