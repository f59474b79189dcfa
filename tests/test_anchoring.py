"""Heads anchoring: the builders against independent computations, and the one pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.anchoring import (
    AnchoringActivations,
    build_caa,
    build_steering,
    collect_anchoring_activations,
    fit_anchoring,
    truthfulqa_prompts,
)
from fasb_lens.data import load_mini_truthfulqa
from fasb_lens.splits import Split, train_val_split


@pytest.fixture(scope="module")
def parts(tiny_anchoring):
    anchoring = tiny_anchoring
    split = Split.from_dict(anchoring.steering.split)
    return anchoring.probes, anchoring.activations, anchoring.tuning, split


@pytest.fixture(scope="module")
def steering(parts):
    probes, acts, tuning, split = parts
    return build_steering(probes, acts, tuning, top_k=3, split=split.to_dict(), direction="probe")


def test_builders(parts, steering) -> None:
    probes, acts, tuning, _ = parts
    heads = probes.top_heads(3)
    assert steering.heads == tuple(heads)
    weight, _ = probes.params(heads)
    torch.testing.assert_close(steering.directions, weight / weight.norm(dim=-1, keepdim=True))
    rows = torch.cat([probes.train_idx, probes.val_idx])
    z, labels = acts.heads(heads)[rows], acts.labels[rows]
    difference = z[labels == 1].mean(0) - z[labels == 0].mean(0)
    prototype = build_steering(probes, acts, tuning, top_k=3)  # the released run's default
    torch.testing.assert_close(
        prototype.directions, difference / difference.norm(dim=-1, keepdim=True)
    )
    # sigma: population standard deviation of the tuning projections, computed with numpy
    projections = np.einsum("nkd,kd->nk", tuning.heads(heads).numpy(), steering.directions.numpy())
    np.testing.assert_allclose(steering.scales.numpy(), projections.std(axis=0), rtol=1e-5)
    random = build_steering(probes, acts, tuning, top_k=3, direction="random", seed=5)
    again = build_steering(probes, acts, tuning, top_k=3, direction="random", seed=5)
    assert torch.equal(random.directions, again.directions)
    assert not torch.allclose(random.directions, steering.directions)
    chosen = build_steering(probes, acts, tuning, heads=[Head(0, 1), Head(3, 0)], direction="probe")
    assert chosen.heads == (Head(0, 1), Head(3, 0))


def test_the_pipeline_writes_resumable_folders_and_builds_caa(tiny_llama, tmp_path) -> None:
    questions = load_mini_truthfulqa()[:10]
    probing, tuning = truthfulqa_prompts(questions, tuning_seed=0)
    split = train_val_split([q.id for q in questions], seed=0)
    collected = collect_anchoring_activations(
        tiny_llama, probing, tuning, residual_layer=2, out_dir=tmp_path, progress=False
    )
    assert set(collected.seconds) == {"probing", "tuning", "residual"}
    loaded = AnchoringActivations.load(tmp_path, model=tiny_llama)
    assert torch.equal(loaded.probing.z, collected.probing.z)
    assert torch.equal(loaded.residual.z, collected.residual.z)
    anchoring = fit_anchoring(loaded, split, top_k=3, direction="prototype", progress=False)
    assert anchoring.steering.direction_kind == "prototype" and anchoring.caa.layer == 2
    rows = torch.cat([anchoring.probes.train_idx, anchoring.probes.val_idx])
    residual, labels = loaded.residual.layer(2)[rows], loaded.probing.labels[rows]
    want = residual[labels == 1].mean(0) - residual[labels == 0].mean(0)
    torch.testing.assert_close(anchoring.caa.vector, want)
    torch.testing.assert_close(build_caa(loaded.residual, 2, rows).vector, want)
    anchoring.save(tmp_path / "artifact")
    assert {p.name for p in (tmp_path / "artifact").iterdir()} == {
        f"{name}.{suffix}"
        for name in ("probes", "steering", "caa")
        for suffix in ("json", "safetensors")
    }
    # without tuning prompts the probing activations set the scales (the MC datasets' case)
    alone = collect_anchoring_activations(tiny_llama, probing, progress=False)
    assert alone.tuning is alone.probing and alone.residual is None
    with pytest.raises(ValueError, match="residual-stream activations"):
        build_caa(loaded.probing, 2)  # type: ignore[arg-type]
