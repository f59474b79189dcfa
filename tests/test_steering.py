"""Steering vectors: builders, what a hook touches (and what it leaves alone), the artifact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fasb_lens._types import Head
from fasb_lens.anchoring import build_steering
from fasb_lens.interventions import position_mask
from fasb_lens.models import forward, hook_z_name, pad, pad_token_id, tokenize
from fasb_lens.policies import PolicySettings
from fasb_lens.splits import Split
from fasb_lens.steering import Steering

PROMPTS = ["Q: Do goldfish remember things? A: Yes, for months.", "I have no comment."]


@pytest.fixture(scope="module")
def parts(tiny_anchoring):
    anchoring = tiny_anchoring
    split = Split.from_dict(anchoring.steering.split)
    return anchoring.probes, anchoring.activations, anchoring.tuning, split


@pytest.fixture(scope="module")
def steering(parts) -> Steering:
    probes, acts, tuning, split = parts
    return build_steering(probes, acts, tuning, top_k=3, split=split.to_dict(), direction="probe")


def batch(model):
    ids, mask = pad(tokenize(model, PROMPTS), pad_id=pad_token_id(model), side="left")
    return ids, mask


def run_z(model, steering: Steering | None, strength=1.0, **kwargs) -> dict[int, torch.Tensor]:
    """``hook_z`` of every layer as the next module sees it (after any steering hook)."""
    ids, mask = batch(model)
    seen: dict[int, torch.Tensor] = {}

    def capture(z, hook):
        seen[int(hook.name.split(".")[1])] = z.detach().clone()
        return z

    capture_hooks = [(hook_z_name(layer), capture) for layer in range(model.cfg.n_layers)]
    with torch.inference_mode():
        if steering is None:
            with model.hooks(fwd_hooks=capture_hooks):
                forward(model, ids, mask)
        else:
            with steering.apply(model, strength, **kwargs), model.hooks(fwd_hooks=capture_hooks):
                forward(model, ids, mask)
    return seen


def test_strength_zero_is_no_steering(tiny_llama, steering) -> None:
    ids, mask = batch(tiny_llama)
    with torch.inference_mode():
        plain = forward(tiny_llama, ids, mask)
        with steering.apply(tiny_llama, 0.0, positions="all"):
            steered = forward(tiny_llama, ids, mask)
    assert torch.equal(plain, steered)


@pytest.mark.parametrize("positions", ["last", "all", 7, "rows", "mask"])
def test_only_anchored_heads_at_chosen_positions_change(tiny_llama, steering, positions) -> None:
    ids, _ = batch(tiny_llama)
    n_pos = ids.shape[1]
    if positions == "rows":
        positions = torch.tensor([n_pos - 2, 3])
    elif positions == "mask":
        positions = torch.zeros(2, n_pos, dtype=torch.bool)
        positions[0, 4] = positions[1, 9] = True
    expected_mask = position_mask(positions, 2, n_pos)
    plain = run_z(tiny_llama, None)
    steered = run_z(tiny_llama, steering, 2.0, positions=positions)
    first = min(head.layer for head in steering.heads)
    for layer in range(first + 1):  # up to the first steered layer, only the vectors differ
        delta = steered[layer] - plain[layer]
        for head in range(tiny_llama.cfg.n_heads):
            if Head(layer, head) in steering.heads:
                k = steering.heads.index(Head(layer, head))
                want = 2.0 * steering.scales[k] * steering.directions[k]
                torch.testing.assert_close(
                    delta[expected_mask][:, head], want.expand(int(expected_mask.sum()), -1)
                )
                assert torch.equal(
                    steered[layer][~expected_mask][:, head], plain[layer][~expected_mask][:, head]
                )
            else:
                assert torch.equal(steered[layer][:, :, head], plain[layer][:, :, head])


def test_strength_is_linear_and_per_row(tiny_llama, steering) -> None:
    plain = run_z(tiny_llama, None)
    layer = steering.heads[0].layer
    once = run_z(tiny_llama, steering, 1.0, positions="all")[layer] - plain[layer]
    twice = run_z(tiny_llama, steering, 2.0, positions="all")[layer] - plain[layer]
    torch.testing.assert_close(twice, 2 * once)
    per_row = run_z(tiny_llama, steering, torch.tensor([0.0, 2.0]), positions="all")
    assert torch.equal(per_row[layer][0], plain[layer][0])
    torch.testing.assert_close(per_row[layer][1] - plain[layer][1], twice[1])


def test_hooks_are_removed_after_apply(tiny_llama, steering) -> None:
    ids, mask = batch(tiny_llama)
    with torch.inference_mode():
        before = forward(tiny_llama, ids, mask)
        with pytest.raises(RuntimeError, match="boom"), steering.apply(tiny_llama, 5.0):
            raise RuntimeError("boom")
        after = forward(tiny_llama, ids, mask)
    assert torch.equal(before, after)


def test_artifact_round_trip_and_format(steering, tmp_path) -> None:
    steering.save(tmp_path)
    tensors = load_file(tmp_path / "steering.safetensors")
    assert tensors["heads"].dtype == torch.int64 and tensors["heads"].shape == (3, 2)
    assert {name: tuple(t.shape) for name, t in tensors.items() if name != "heads"} == {
        "directions": (3, 16),
        "scales": (3,),
        "tracker.probe.weight": (3, 16),
        "tracker.probe.bias": (3,),
        "tracker.prototype.true_mean": (3, 16),
        "tracker.prototype.false_mean": (3, 16),
        "val_accuracy": (4, 4),
        "spread": (3, 16, 16),
    }
    meta = json.loads((tmp_path / "steering.json").read_text())
    assert meta["hook_name"] == "blocks.{layer}.attn.hook_z" and meta["top_k"] == 3
    assert meta["defaults"] == {"alpha": 60.0, "threshold": 0.6, "backtrack_tokens": 10}
    assert meta["split"]["protocol"] == "train_val" and meta["direction_kind"] == "probe"
    assert meta["format_version"] == 2 and meta["trackers"] == ["probe", "prototype"]
    loaded = Steering.load(tmp_path)
    assert loaded.heads == steering.heads and loaded.defaults == steering.defaults
    for name in ("directions", "scales", "val_accuracy", "spread"):
        assert torch.equal(getattr(loaded, name), getattr(steering, name))
    for tracker, tensors in steering.trackers.items():
        for key, value in tensors.items():
            assert torch.equal(loaded.trackers[tracker][key], value)


def test_a_format_1_artifact_still_loads(steering, tmp_path) -> None:
    """Artifacts written before trackers were registered had a field per tensor."""
    steering.save(tmp_path)
    tensors = load_file(tmp_path / "steering.safetensors")
    old = {
        "probe_weight": "tracker.probe.weight",
        "probe_bias": "tracker.probe.bias",
        "prototype_true": "tracker.prototype.true_mean",
        "prototype_false": "tracker.prototype.false_mean",
    }
    renamed = {old_name: tensors.pop(new) for old_name, new in old.items()}
    save_file({**tensors, **renamed}, tmp_path / "steering.safetensors")
    meta = json.loads((tmp_path / "steering.json").read_text())
    meta["format_version"] = 1
    del meta["trackers"]
    (tmp_path / "steering.json").write_text(json.dumps(meta))
    loaded = Steering.load(tmp_path)
    assert set(loaded.trackers) == {"probe", "prototype"}
    assert torch.equal(loaded.trackers["probe"]["weight"], steering.trackers["probe"]["weight"])


def test_artifact_refuses_another_model(steering, tiny_gpt2, tmp_path) -> None:
    steering.save(tmp_path)
    with pytest.raises(ValueError, match="4 layers x 4 heads of 16, but this model has 3 layers"):
        Steering.load(tmp_path, model=tiny_gpt2)
    with pytest.raises(ValueError, match="this steering: made for a model with 4 layers"):
        with steering.apply(tiny_gpt2, 1.0):
            pass


def test_tracker_and_subset(steering) -> None:
    tracker = steering.tracker()
    assert tracker.heads == steering.heads
    z = steering.trackers["prototype"]["true_mean"][None].expand(4, -1, -1)
    assert steering.tracker("prototype").p_true(z).shape == (4,)
    one = steering.subset([steering.heads[1]])
    assert one.heads == (steering.heads[1],) and torch.equal(
        one.directions[0], steering.directions[1]
    )


def test_invalid_steering(steering) -> None:
    with pytest.raises(ValueError, match="directions must have unit length"):
        Steering(**{**vars(steering), "directions": steering.directions * 2})
    with pytest.raises(ValueError, match="must be >= 0, got 60.0, -0.5, 10"):
        PolicySettings(threshold=-0.5)
    with pytest.raises(ValueError, match="the probe tracker's tensor 'bias' is missing"):
        Steering(**{**vars(steering), "trackers": {"probe": {"weight": steering.directions}}})
    with pytest.raises(ValueError, match="L9H0 does not exist"):
        Steering(**{**vars(steering), "heads": (Head(9, 0), *steering.heads[1:])})
