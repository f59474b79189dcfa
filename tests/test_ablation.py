"""Per-head ablations: what the hooks change, the metrics, the resumable study."""

from __future__ import annotations

import json

import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.ablation import (
    ablated,
    ablation_study,
    logprob_margin,
    mc2_metric,
    probe_accuracy_metric,
)
from fasb_lens.anchoring import build_steering
from fasb_lens.data import load_mini_truthfulqa, load_prompt_format, probing_prompts
from fasb_lens.models import forward, hook_z_name, tokenize
from fasb_lens.storage import ABLATION_LOG

QUESTIONS = load_mini_truthfulqa()[:4]


def z_of(model, layer: int) -> torch.Tensor:
    seen = {}
    ids = torch.tensor(tokenize(model, ["Q: Is the sky blue? A: Yes."]))

    def keep(z, hook):
        seen["z"] = z.clone()
        return z

    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook_z_name(layer), keep)]):
        forward(model, ids)
    return seen["z"]


def test_zero_and_mean_ablation_change_only_their_head(tiny_llama) -> None:
    plain = z_of(tiny_llama, 2)
    with ablated(tiny_llama, [Head(2, 1)]):
        zeroed = z_of(tiny_llama, 2)
    assert torch.equal(zeroed[:, :, 1], torch.zeros_like(zeroed[:, :, 1]))
    others = [0, 2, 3]
    assert torch.equal(zeroed[:, :, others], plain[:, :, others])
    means = torch.randn(4, 4, 16)
    with ablated(tiny_llama, [Head(2, 1)], mode="mean", means=means):
        averaged = z_of(tiny_llama, 2)
    assert torch.equal(averaged[0, :, 1], means[2, 1].expand(averaged.shape[1], -1))
    assert torch.equal(z_of(tiny_llama, 2), plain)  # the hook is gone afterwards
    with pytest.raises(ValueError, match="mean ablation needs"):
        with ablated(tiny_llama, [Head(0, 0)], mode="mean"):
            pass


def test_logprob_margin_by_hand(tiny_llama) -> None:
    question = QUESTIONS[0]
    metric = logprob_margin([question], batch_size=3)

    def log_prob(answer: str) -> float:
        prefix = tokenize(tiny_llama, [f"Q: {question.question} A:"])[0]
        cont = tokenize(tiny_llama, [f" {answer}"], prepend_bos=False)[0]
        with torch.inference_mode():
            logits = forward(tiny_llama, torch.tensor([prefix + cont]))[0]
        lp = torch.log_softmax(logits, -1)
        return sum(float(lp[len(prefix) - 1 + t, tok]) for t, tok in enumerate(cont))

    true = [log_prob(a) for a in question.correct_answers]
    false = [log_prob(a) for a in question.incorrect_answers]
    expected = sum(true) / len(true) - sum(false) / len(false)
    assert metric(tiny_llama) == pytest.approx(expected, abs=1e-4)


def test_study_grid_and_resume(tiny_llama, tmp_path) -> None:
    metric = logprob_margin(QUESTIONS)
    heads = [Head(0, 0), Head(1, 2), Head(3, 3)]
    result = ablation_study(
        tiny_llama, metric, heads=heads, metric_name="margin", out=tmp_path, progress=False
    )
    assert result.effect.shape == (4, 4)
    assert int((~result.effect.isnan()).sum()) == 3
    with ablated(tiny_llama, [Head(1, 2)]):
        expected = metric(tiny_llama) - result.baseline
    assert float(result.effect[1, 2]) == pytest.approx(expected, abs=1e-6)
    assert [head for head, _ in result.top(3)] == sorted(
        heads, key=lambda h: float(result.effect[h])
    )
    lines = (tmp_path / ABLATION_LOG).read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["key"] == "baseline"
    calls = []

    def counting(model):
        calls.append(1)
        return metric(model)

    again = ablation_study(
        tiny_llama, counting, heads=heads, metric_name="margin", out=tmp_path, progress=False
    )
    assert calls == [] and torch.equal(again.effect.nan_to_num(9), result.effect.nan_to_num(9))


def test_steering_one_head_at_a_time_and_other_metrics(tiny_llama, tiny_anchoring) -> None:
    acts, tuning, probes = tiny_anchoring.activations, tiny_anchoring.tuning, tiny_anchoring.probes
    prompts = probing_prompts(QUESTIONS)
    heads = [Head(0, 1), Head(1, 0)]
    steering = build_steering(probes, acts, tuning, heads=heads)
    metric = logprob_margin(QUESTIONS[:2])
    result = ablation_study(
        tiny_llama,
        metric,
        heads=heads,
        mode="steer",
        steering=steering,
        strength=20.0,
        progress=False,
    )
    assert not result.effect[0, 1].isnan() and result.effect[0, 1] != 0
    with pytest.raises(ValueError, match="no vector for L2H2"):
        ablation_study(
            tiny_llama, metric, heads=[Head(2, 2)], mode="steer", steering=steering, progress=False
        )
    later = probe_accuracy_metric(prompts, probes, [Head(3, 0), Head(3, 1)])
    assert 0 <= later(tiny_llama) <= 1
    mc2 = mc2_metric(QUESTIONS[:1], fmt=load_prompt_format())
    assert 0 < mc2(tiny_llama) < 1
