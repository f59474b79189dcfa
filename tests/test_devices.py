"""Device safety: the places that combine tensors from several layers or caches move them
to one device first, so a model that accelerate splits over several GPUs (each layer on
its own) runs; on one device nothing is copied.

Without a GPU the second device is ``meta`` where that means something: stacking a CPU
and a meta tensor fails unless the code moves them first. Indexing a cache with an index
from another device cannot be checked with meta (a meta index cannot be copied, and a meta
tensor takes any index), so those checks need CUDA (a GPU and the CPU, or two GPUs) and
are skipped here otherwise.
"""

from __future__ import annotations

import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.interventions import heads_from
from fasb_lens.models import build_cache, cache_layers, load_model, select_rows
from fasb_lens.models.loading import check_placement, parse_device_map
from fasb_lens.tree_forward import selected_cache

CUDA = torch.cuda.is_available()


def _pairs(meta: bool = True) -> list[tuple[str, str]]:
    """(first device, second device) pairs this machine can hold."""
    pairs = [("cpu", "meta")] if meta else []
    if CUDA:
        pairs.append(("cuda:0", "cpu"))
    if torch.cuda.device_count() > 1:
        pairs.append(("cuda:0", "cuda:1"))
    return pairs


@pytest.mark.parametrize(("first", "second"), _pairs())
def test_heads_from_stacks_layers_on_two_devices(first: str, second: str) -> None:
    z = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # [batch, heads, d_head]
    store = {0: z.to(first), 1: (z + 100).to(second)}
    heads = [Head(0, 2), Head(1, 0), Head(0, 1)]
    onto_second = heads_from(store, heads, device=second)
    assert onto_second.device == torch.device(second) and onto_second.shape == (2, 3, 4)
    if second == "meta":  # nothing can be copied out of meta: the rest needs two real devices
        return
    stacked = heads_from(store, heads)  # on the first head's device
    assert stacked.device == torch.device(first)
    assert torch.equal(stacked[:, 0].cpu(), z[:, 2]) and torch.equal(stacked[:, 2].cpu(), z[:, 1])
    assert torch.equal(stacked[:, 1].cpu(), z[:, 0] + 100)


def test_heads_from_on_one_device_copies_nothing() -> None:
    z = torch.randn(2, 3, 4)
    stacked = heads_from({0: z}, [Head(0, 1)])
    assert torch.equal(stacked[:, 0], z[:, 1])
    with pytest.raises(ValueError, match="no heads"):
        heads_from({0: z}, [])


def _cache_on(devices: list[str]):
    """A KV cache of 3 rows whose layer ``i`` lives on ``devices[i]``."""
    keys = torch.arange(3 * 2 * 4 * 5, dtype=torch.float32).reshape(3, 2, 4, 5)
    return keys, build_cache([(keys.to(d), (keys + 1).to(d)) for d in devices])


@pytest.mark.parametrize(("first", "second"), _pairs(meta=False))
def test_select_rows_indexes_each_layer_on_its_device(first: str, second: str) -> None:
    keys, cache = _cache_on([first, second])
    rows = torch.tensor([2, 0], device=second)  # built on another layer's device
    chosen = cache_layers(select_rows(cache, rows))
    assert [k.device for k, _ in chosen] == [torch.device(first), torch.device(second)]
    assert torch.equal(chosen[0][0].cpu(), keys[[2, 0]])
    assert torch.equal(chosen[0][1].cpu(), keys[[2, 0]] + 1)


@pytest.mark.parametrize(("first", "second"), _pairs(meta=False))
def test_selected_cache_indexes_each_layer_on_its_device(first: str, second: str) -> None:
    keys, cache = _cache_on([first, second])
    rows = torch.tensor([1, 1, 0], device=second)
    chosen = selected_cache(cache_layers(cache), rows)
    assert chosen[0][0].device == torch.device(first)
    assert torch.equal(chosen[0][0].cpu(), keys[[1, 1, 0]])


def test_placements_that_contradict_each_other_are_refused() -> None:
    check_placement("cuda", None, None)
    check_placement(None, "auto", None)
    check_placement(None, None, 2)
    check_placement("cuda", None, 1)  # one device is no split
    with pytest.raises(ValueError, match="--device is one device"):
        check_placement("cuda", "auto", None)
    with pytest.raises(ValueError, match="--device is one device"):
        check_placement("cpu", None, 2)
    with pytest.raises(ValueError, match="give one"):
        check_placement(None, "balanced", 2)
    assert parse_device_map('{"model.embed_tokens": "cpu"}') == {"model.embed_tokens": "cpu"}
    assert parse_device_map("auto") == "auto"
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_device_map("{nope")


def test_a_device_map_loads_a_folder_on_the_cpu(tiny_llama_folder, tiny_llama) -> None:
    """``--device-map`` reaches accelerate: an all-CPU map is the one a CPU can check."""
    split = load_model(tiny_llama_folder, device_map="cpu")
    assert split.cfg.device == "cpu"
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.inference_mode():
        assert torch.allclose(split(ids), tiny_llama(ids), atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_generation_split_over_two_gpus_equals_one(tiny_llama_folder) -> None:
    from fasb_lens.generation import GenerationConfig, generate

    one = load_model(tiny_llama_folder, device="cuda:0")
    two = load_model(tiny_llama_folder, n_devices=2)
    config = GenerationConfig(max_new_tokens=8)
    prompts = ["Q: Is the sky blue?\nA:", "Q: What is 2 + 2?\nA:"]
    assert [t.tokens for t in generate(one, prompts, config=config)] == [
        t.tokens for t in generate(two, prompts, config=config)
    ]
