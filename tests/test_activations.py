"""Head-activation collection: correctness against independent computations, I/O, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from fasb_lens._types import Head
from fasb_lens.activations import HeadActivations, collect_head_activations
from fasb_lens.activations import collect as activations_module
from fasb_lens.data import LabelledPrompt
from fasb_lens.models import embedded_model_folder, hook_z_name, model_shape, tokenize
from fasb_lens.storage import ACTIVATIONS_MANIFEST as MANIFEST_NAME

PROMPTS = [
    "Q: Is the Great Wall of China visible from space? A: No, it is too narrow.",
    "I have no comment.",
    "Q: How long do goldfish remember things? A: For months.",
    "Yes.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
]
LABELLED = [LabelledPrompt(text, label=i % 2, group=f"q{i // 2}") for i, text in enumerate(PROMPTS)]


def by_hand(model, prompts: list[str]) -> torch.Tensor:
    """``hook_z`` at the last token, one prompt at a time through ``run_with_cache``."""
    rows = []
    for ids in tokenize(model, prompts):
        _, cache = model.run_with_cache(
            torch.tensor([ids]), names_filter=lambda name: name.endswith("attn.hook_z")
        )
        layers = range(model.cfg.n_layers)
        rows.append(torch.stack([cache[hook_z_name(layer)][0, -1] for layer in layers]))
    return torch.stack(rows)


def o_proj_inputs(hf_model, ids: list[int], n_heads: int) -> torch.Tensor:
    """The input of every layer's output projection at the last token, split into heads.

    ``hf_model`` is a plain HuggingFace model that no bridge has touched.
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    layers = (
        hf_model.model.layers
        if hasattr(hf_model, "model")
        else [block.attn for block in hf_model.transformer.h]
    )
    for index, layer in enumerate(layers):
        projection = layer.self_attn.o_proj if hasattr(layer, "self_attn") else layer.c_proj

        def hook(module, args, index=index):
            captured[index] = args[0][0, -1]

        handles.append(projection.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            hf_model(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([captured[i].reshape(n_heads, -1) for i in range(len(captured))])


def test_shapes_labels_and_groups(tiny_model) -> None:
    result = collect_head_activations(tiny_model, LABELLED, batch_size=2, progress=False)
    shape = model_shape(tiny_model)
    assert result.z.shape == (5, shape.n_layers, shape.n_heads, shape.d_head)
    assert result.z.dtype == torch.float32
    assert result.labels.tolist() == [0, 1, 0, 1, 0]
    assert result.groups == ["q0", "q0", "q1", "q1", "q2"]
    assert result.prompts == PROMPTS
    assert torch.equal(result.head(Head(1, 2)), result.z[:, 1, 2])


def test_equals_run_with_cache_by_hand(tiny_model) -> None:
    result = collect_head_activations(tiny_model, PROMPTS, batch_size=3, progress=False)
    torch.testing.assert_close(result.z, by_hand(tiny_model, PROMPTS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [2, 5])
def test_batched_trees_equal_prompts_alone(tiny_model, batch_size: int) -> None:
    """A batch runs as token trees (prompts that begin alike share those tokens): every
    prompt's activations are what it gives alone, whatever shares its batch."""
    prompts = [*PROMPTS, *(f"{PROMPTS[0]} {tail}" for tail in ("No.", "Yes, it is", "No"))]
    ids = tokenize(tiny_model, prompts)
    assert len({tuple(row[:3]) for row in ids}) < len(ids)  # some prompts begin alike
    batched = collect_head_activations(tiny_model, prompts, batch_size=batch_size, progress=False)
    alone = torch.cat(
        [collect_head_activations(tiny_model, [p], progress=False).z for p in prompts]
    )
    torch.testing.assert_close(batched.z, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_equals_hf_o_proj_input(kind: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{kind}")
    fresh = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"tiny_{kind}_folder"))
    result = collect_head_activations(model, PROMPTS, batch_size=5, progress=False)
    for row, ids in enumerate(tokenize(model, PROMPTS)):
        expected = o_proj_inputs(fresh, ids, model.cfg.n_heads)
        torch.testing.assert_close(result.z[row], expected, atol=1e-5, rtol=0)


def test_layer_subset_stops_early_and_matches(tiny_llama) -> None:
    full = collect_head_activations(tiny_llama, PROMPTS, progress=False)
    calls: list[str] = []

    def count(activation, hook):
        calls.append(hook.name)
        return activation

    with tiny_llama.hooks(fwd_hooks=[(hook_z_name(3), count), ("blocks.2.hook_resid_post", count)]):
        part = collect_head_activations(tiny_llama, PROMPTS, layers=[2, 0], progress=False)
    assert part.layers == (0, 2)
    torch.testing.assert_close(part.z, full.z[:, [0, 2]], atol=1e-6, rtol=0)
    assert calls == []  # nothing after layer 2's hook_z ran
    with pytest.raises(KeyError, match="layer 1 was not collected"):
        part.head(Head(1, 0))


def test_save_load_round_trip(tiny_llama, tmp_path: Path) -> None:
    result = collect_head_activations(tiny_llama, LABELLED, progress=False, template="Q: {q}")
    result.save(tmp_path / "acts")
    loaded = HeadActivations.load(tmp_path / "acts", model=tiny_llama)
    assert torch.equal(loaded.z, result.z)
    assert torch.equal(loaded.labels, result.labels)
    assert (loaded.prompts, loaded.groups, loaded.info) == (
        result.prompts,
        result.groups,
        result.info,
    )
    manifest = json.loads((tmp_path / "acts" / MANIFEST_NAME).read_text())
    assert manifest["hook_name"] == "blocks.{layer}.attn.hook_z"
    assert manifest["template"] == "Q: {q}"
    assert {"torch", "transformers", "transformer-lens"} <= set(manifest["versions"])
    assert not list((tmp_path / "acts").glob("*.pkl"))


def test_load_refuses_another_model_shape(tiny_llama, tiny_gpt2, tmp_path: Path) -> None:
    collect_head_activations(tiny_llama, PROMPTS, progress=False).save(tmp_path / "acts")
    with pytest.raises(ValueError, match="4 layers x 4 heads of 16, but this model has 3 layers"):
        HeadActivations.load(tmp_path / "acts", model=tiny_gpt2)


def test_streaming_resumes_after_interruption(
    tiny_llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = collect_head_activations(tiny_llama, LABELLED, progress=False)
    real_write = activations_module.write_shard
    written: list[str] = []

    def write_then_die(*args, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(real_write(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(activations_module, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        collect_head_activations(
            tiny_llama, LABELLED, out_dir=tmp_path, chunk_size=2, progress=False
        )
    with pytest.raises(ValueError, match="unfinished collection"):
        HeadActivations.load(tmp_path)
    monkeypatch.setattr(activations_module, "write_shard", real_write)

    recomputed: list[int] = []
    real_gather = activations_module.gather_last_position

    def counting_gather(model, token_lists, *args, **kwargs):
        recomputed.append(len(token_lists))
        return real_gather(model, token_lists, *args, **kwargs)

    monkeypatch.setattr(activations_module, "gather_last_position", counting_gather)
    resumed = collect_head_activations(
        tiny_llama, LABELLED, out_dir=tmp_path, chunk_size=2, progress=False
    )
    assert recomputed == [2, 1]  # the first chunk was not recomputed
    torch.testing.assert_close(resumed.z, expected.z, atol=1e-6, rtol=0)
    assert torch.equal(resumed.labels, expected.labels)
    with pytest.raises(ValueError, match="other prompts or settings"):
        collect_head_activations(tiny_llama, PROMPTS[:2], out_dir=tmp_path, progress=False)


def test_bad_arguments(tiny_gpt2) -> None:
    with pytest.raises(ValueError, match="position must be 'last'"):
        collect_head_activations(tiny_gpt2, PROMPTS, position="mean", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layers \[7\] are not in 0..2"):
        collect_head_activations(tiny_gpt2, PROMPTS, layers=[7], progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        collect_head_activations(tiny_gpt2, [], progress=False)
    with pytest.raises(TypeError, match="not one string"):
        collect_head_activations(tiny_gpt2, "one prompt", progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        collect_head_activations(tiny_gpt2, PROMPTS, batch_size=0, progress=False)


@pytest.mark.slow
def test_default_model_equals_hf_o_proj_input(default_model) -> None:
    fresh = AutoModelForCausalLM.from_pretrained(embedded_model_folder())
    prompts = PROMPTS[:3]
    result = collect_head_activations(default_model, prompts, batch_size=3, progress=False)
    for row, ids in enumerate(tokenize(default_model, prompts)):
        expected = o_proj_inputs(fresh, ids, 9)
        torch.testing.assert_close(result.z[row], expected, atol=1e-4, rtol=0)
