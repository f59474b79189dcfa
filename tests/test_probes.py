"""All-head probes: agreement with scikit-learn, optimality, ranking, trackers, bad input."""

from __future__ import annotations

import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.activations import collect_head_activations
from fasb_lens.data import load_mini_truthfulqa, probing_prompts
from fasb_lens.probes import HeadProbes, fit_head_probes
from fasb_lens.splits import train_val_split
from fasb_lens.trackers import ProbeTracker, PrototypeTracker

N, LAYERS, HEADS, D = 400, 3, 4, 8
PLANTED = Head(1, 2)


@pytest.fixture(scope="module")
def synthetic() -> tuple[torch.Tensor, torch.Tensor]:
    """Random activations where only head (1, 2) carries the label (along 2 features)."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(N, LAYERS, HEADS, D, generator=generator)
    labels = (torch.rand(N, generator=generator) < 0.45).long()
    z[labels == 1, PLANTED.layer, PLANTED.head, :2] += 1.0
    return z, labels


def fit(synthetic, **kwargs) -> HeadProbes:
    z, labels = synthetic
    return fit_head_probes(
        z, labels, train_idx=range(300), val_idx=range(300, N), progress=False, **kwargs
    )


def test_torch_engine_agrees_with_sklearn(synthetic) -> None:
    ours, reference = fit(synthetic), fit(synthetic, engine="sklearn")
    torch.testing.assert_close(ours.weight, reference.weight, atol=2e-3, rtol=0)
    torch.testing.assert_close(ours.bias, reference.bias, atol=2e-3, rtol=0)
    assert (ours.val_accuracy - reference.val_accuracy).abs().max() <= 0.01


def test_torch_engine_reaches_the_optimum(synthetic) -> None:
    """The gradient of C * log-loss + ||w||^2 / 2 vanishes at the fitted probes."""
    z, labels = synthetic
    x = z[:300].double()
    y = labels[:300].double()

    def largest_gradient(probes) -> float:
        logits = torch.einsum("nlhd,lhd->nlh", x, probes.weight.double()) + probes.bias.double()
        residual = torch.sigmoid(logits) - y[:, None, None]
        grad_w = 0.5 * torch.einsum("nlh,nlhd->lhd", residual, x) + probes.weight.double()
        grad_b = 0.5 * residual.sum(0)
        return max(float(grad_w.abs().max()), float(grad_b.abs().max()))

    # the default tolerance bounds the gradient by tol * C * n; a tight one reaches the optimum
    assert largest_gradient(fit(synthetic, C=0.5)) < 1e-5 * 0.5 * 300
    assert largest_gradient(fit(synthetic, C=0.5, tol=1e-9)) < 1e-6


def test_planted_head_ranks_first(synthetic) -> None:
    probes = fit(synthetic)
    assert probes.top_heads(1) == [PLANTED]
    assert probes.val_accuracy[PLANTED] > 0.7 > probes.val_majority
    ranked = probes.ranked_heads()
    accuracies = [float(probes.val_accuracy[head]) for head in ranked]
    assert accuracies == sorted(accuracies, reverse=True) and len(ranked) == LAYERS * HEADS
    summary = probes.summary(3)
    assert summary["best_heads"][0] == {
        "layer": 1,
        "head": 2,
        "val_accuracy": round(float(probes.val_accuracy[PLANTED]), 4),
        "train_accuracy": round(float(probes.train_accuracy[PLANTED]), 4),
    }


def test_top_k_and_random_heads(synthetic) -> None:
    probes = fit(synthetic)
    with pytest.raises(
        ValueError, match=r"top_k must be between 1 and 12 \(fitted heads\), got 13"
    ):
        probes.top_heads(13)
    drawn = probes.random_heads(5, seed=1)
    assert drawn == probes.random_heads(5, seed=1) != probes.random_heads(5, seed=2)
    assert len(set(drawn)) == 5


def test_probe_tracker_is_vectorised(synthetic) -> None:
    z, _ = synthetic
    probes = fit(synthetic)
    heads = probes.top_heads(3)
    tracker = probes.tracker(heads)
    stacked = torch.stack([z[:, h.layer, h.head] for h in heads], dim=1)  # [n, k, d]
    batched = stacked.reshape(20, 20, 3, D)  # e.g. [batch, pos, k, d]
    p = tracker.p_true(batched)
    assert p.shape == (20, 20)
    manual = torch.stack(
        [
            torch.sigmoid(stacked[:, i] @ probes.weight[h] + probes.bias[h])
            for i, h in enumerate(heads)
        ]
    ).mean(0)
    torch.testing.assert_close(p.flatten(), manual)


def test_prototype_tracker() -> None:
    true_mean = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tracker = PrototypeTracker((Head(0, 0), Head(0, 1)), true_mean, -true_mean)
    assert tracker.p_true(true_mean).item() > 0.8
    assert tracker.p_true(-true_mean).item() < 0.2
    assert tracker.p_true(torch.zeros(5, 2, 2) + true_mean).shape == (5,)
    with pytest.raises(ValueError, match="temperature must be positive"):
        PrototypeTracker((Head(0, 0),), true_mean[:1], true_mean[:1], temperature=0)


def test_probe_tracker_by_hand() -> None:
    tracker = ProbeTracker((Head(0, 0),), torch.tensor([[2.0, 0.0]]), torch.tensor([-1.0]))
    assert tracker.p_true(torch.tensor([[0.5, 9.0]])).item() == pytest.approx(0.5)


def test_save_load_round_trip(synthetic, tmp_path) -> None:
    probes = fit(synthetic)
    probes.save(tmp_path)
    loaded = HeadProbes.load(tmp_path)
    for name in ("weight", "bias", "train_accuracy", "val_accuracy", "train_idx", "val_idx"):
        assert torch.equal(getattr(loaded, name), getattr(probes, name))
    assert loaded.val_majority == probes.val_majority


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda z, y: (z, y[:-1]), r"399 labels for 400 activation rows"),
        (lambda z, y: (z, torch.zeros_like(y)), r"training rows hold only label 0 \(300 rows\)"),
        (
            lambda z, y: (z.index_put_((torch.tensor([5]),), torch.tensor(float("nan"))), y),
            r"NaN or infinite values in 12 heads \(first: L0H0\)",
        ),
        (lambda z, y: (z, y * 2), r"labels must be 0 \(false\) or 1 \(true\)"),
        (lambda z, y: (z[:, 0], y), r"must be \[n, layer, head, d_head\]"),
    ],
)
def test_bad_input(synthetic, change, message: str) -> None:
    z, labels = change(synthetic[0].clone(), synthetic[1].clone())
    with pytest.raises(ValueError, match=message):
        fit_head_probes(z, labels, train_idx=range(300), val_idx=range(300, 399), progress=False)


def test_bad_indices(synthetic) -> None:
    z, labels = synthetic
    with pytest.raises(ValueError, match="share rows"):
        fit_head_probes(z, labels, train_idx=range(10), val_idx=range(5, 20), progress=False)
    with pytest.raises(ValueError, match=r"val_idx holds rows outside 0..399"):
        fit_head_probes(z, labels, train_idx=range(10), val_idx=[400], progress=False)
    with pytest.raises(ValueError, match="engine must be 'torch' or 'sklearn'"):
        fit_head_probes(z, labels, train_idx=range(10), val_idx=[11], engine="jax", progress=False)


def test_probes_on_a_tiny_model_with_a_layer_subset(tiny_llama) -> None:
    questions = load_mini_truthfulqa()[:12]
    prompts = probing_prompts(questions)
    acts = collect_head_activations(tiny_llama, prompts, layers=[1, 3], progress=False)
    split = train_val_split([q.id for q in questions], seed=0)
    probes = fit_head_probes(
        acts,
        train_idx=split.rows(acts.groups, "train"),
        val_idx=split.rows(acts.groups, "val"),
        progress=False,
    )
    assert probes.val_accuracy.shape == (4, 4)
    assert (
        probes.val_accuracy[[0, 2]].isnan().all() and not probes.val_accuracy[[1, 3]].isnan().any()
    )
    assert {head.layer for head in probes.top_heads(8)} == {1, 3}


def test_fit_on_a_split(tiny_anchoring) -> None:
    from fasb_lens.splits import Split

    acts, probes = tiny_anchoring.activations, tiny_anchoring.probes
    split = Split.from_dict(tiny_anchoring.steering.split)
    again = fit_head_probes(acts, split=split, progress=False)
    assert torch.equal(again.train_idx, torch.as_tensor(split.rows(acts.groups, "train")))
    assert torch.equal(again.val_accuracy, probes.val_accuracy)
    with pytest.raises(ValueError, match="either split or train_idx"):
        fit_head_probes(acts, split=split, train_idx=[0], progress=False)
    with pytest.raises(ValueError, match="give the rows"):
        fit_head_probes(acts, progress=False)
