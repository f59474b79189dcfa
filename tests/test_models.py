"""Loading, shapes, the BOS rule, tokenisation limits and the KV-cache guard."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from fasb_lens import models
from fasb_lens._types import Head
from fasb_lens.models import (
    EmbeddedModelMissingError,
    KVCache,
    ModelShape,
    PromptTooLongError,
    build_cache,
    cache_layers,
    chat_prompt,
    copy_cache,
    crop_cache,
    embedded_model_file,
    forward,
    model_shape,
    pad,
    pad_token_id,
    select_rows,
    tokenize,
)

PROMPTS = ["Q: Is the Great Wall visible from space? A: No.", "The quick brown fox"]


def test_tiny_model_shapes(tiny_llama, tiny_gpt2) -> None:
    assert model_shape(tiny_llama) == ModelShape(4, 4, 16)
    assert tiny_llama.cfg.n_key_value_heads == 2  # grouped-query attention
    assert model_shape(tiny_gpt2) == ModelShape(3, 4, 12)
    assert tiny_gpt2.cfg.d_vocab != tiny_gpt2.cfg.d_model


def test_hook_z_has_query_heads(tiny_llama) -> None:
    ids = torch.tensor(tokenize(tiny_llama, PROMPTS[:1]))
    _, cache = tiny_llama.run_with_cache(ids, names_filter=models.hook_z_name(1))
    assert cache[models.hook_z_name(1)].shape == (1, ids.shape[1], 4, 16)


def test_model_shape_checks_heads() -> None:
    shape = ModelShape(2, 3, 8)
    shape.check_head(Head(1, 2))
    with pytest.raises(ValueError, match="L2H0 does not exist in a model with 2 layers x 3"):
        shape.check_head(Head(2, 0))
    assert len(shape.heads) == 6
    with pytest.raises(ValueError, match="n_heads must be positive"):
        ModelShape(2, 0, 8)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_bos_rule_matches_hf_tokenizer(kind: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(f"tiny_{kind}_folder")
    model = request.getfixturevalue(f"tiny_{kind}")
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = [hf_tokenizer(text).input_ids for text in PROMPTS]
    assert tokenize(model, PROMPTS) == expected
    assert model.cfg.default_prepend_bos is (kind == "llama")
    assert (expected[0][0] == hf_tokenizer.bos_token_id) is (kind == "llama")


def test_prepend_bos_override(tiny_llama, tiny_gpt2) -> None:
    with_bos = tokenize(tiny_llama, PROMPTS)
    without = tokenize(tiny_llama, PROMPTS, prepend_bos=False)
    assert [ids[1:] for ids in with_bos] == without
    bos = tiny_gpt2.tokenizer.bos_token_id
    assert tokenize(tiny_gpt2, PROMPTS, prepend_bos=True)[0] == [
        bos,
        *tokenize(tiny_gpt2, PROMPTS)[0],
    ]


def test_tokenize_refuses_or_truncates_long_prompts(tiny_llama) -> None:
    long = "the quick brown fox " * 400
    with pytest.raises(
        PromptTooLongError, match=r"prompt 1 has \d+ tokens but the model accepts 1024"
    ):
        tokenize(tiny_llama, ["short", long])
    kept = tokenize(tiny_llama, [long], truncation="left")[0]
    full = tokenize(tiny_llama, [long], max_length=10_000)[0]
    assert len(kept) == 1024
    assert kept[0] == tiny_llama.tokenizer.bos_token_id
    assert kept[1:] == full[-1023:]


def test_tokenize_rejects_a_bare_string_and_empty_prompts(tiny_gpt2) -> None:
    with pytest.raises(TypeError, match="not one string"):
        tokenize(tiny_gpt2, "hello")
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        tokenize(tiny_gpt2, [""])


def test_chat_prompt_uses_the_template(tiny_llama, tiny_gpt2) -> None:
    text = chat_prompt(tiny_llama, "Why is the sky blue?", system="Be brief.")
    assert text == "<|system|>\nBe brief.</s>\n<|user|>\nWhy is the sky blue?</s>\n<|assistant|>\n"
    tiny_gpt2.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(tiny_gpt2, "hi")


def test_pad_both_sides() -> None:
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="'left' or 'right'"):
        pad([[1]], pad_id=0, side="middle")  # type: ignore[arg-type]


def ones(length: int) -> torch.Tensor:
    return torch.ones(1, length, dtype=torch.long)


def cached_logits_match_recompute(model, prompt: str, *, n_steps: int = 4, crop: int = 0) -> float:
    """Largest gap between KV-cached decoding logits and a full recompute.

    Runs the prompt but its last ``n_steps`` tokens through the cache, then feeds those
    tokens one at a time. With ``crop``, the cache first loses its last ``crop``
    positions (as backtracking does), which are fed again as one chunk.
    """
    ids = torch.tensor(tokenize(model, [prompt]))
    split = ids.shape[1] - n_steps
    gaps = []
    with torch.inference_mode():
        full = forward(model, ids)
        _, cache = forward(model, ids[:, :split], use_cache=True)
        if crop:
            crop_cache(cache, crop)
            _, cache = forward(
                model, ids[:, split - crop : split], ones(split), past_key_values=cache
            )
        for position in range(split, ids.shape[1]):
            chunk = ids[:, position : position + 1]
            step, cache = forward(model, chunk, ones(position + 1), past_key_values=cache)
            gaps.append((step[0, -1] - full[0, position]).abs().max().item())
    return max(gaps)


def test_cached_decoding_matches_recompute_tiny(tiny_llama, tiny_gpt2) -> None:
    """Guards the transformers pin: a silently empty KV cache fails this loudly."""
    prompt = "Q: How long do goldfish remember things? A: Goldfish remember for months."
    assert cached_logits_match_recompute(tiny_llama, prompt) < 1e-4
    assert cached_logits_match_recompute(tiny_gpt2, prompt) < 1e-4
    assert cached_logits_match_recompute(tiny_llama, prompt, crop=3) < 1e-4


def _layers(rows: int, length: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(rows, 2, length, 4, generator=generator), torch.randn(rows, 2, length, 4))
        for _ in range(3)
    ]


def test_kv_cache_appends_in_place_like_concatenation() -> None:
    """Appending writes into spare room (the buffer stays where it was) and holds exactly
    what concatenation would; a crop followed by an append overwrites the dropped
    positions; a row selection and a copy are independent of the original."""
    start, steps = _layers(3, 5), [_layers(3, 1, seed=s) for s in range(1, 5)]
    cache = build_cache(start)
    expected = [(k.clone(), v.clone()) for k, v in start]
    for step in steps:
        for index, (keys, values) in enumerate(step):
            cache.update(keys, values, index)
            expected[index] = (
                torch.cat([expected[index][0], keys], dim=2),
                torch.cat([expected[index][1], values], dim=2),
            )
    held = cache_layers(cache)
    for (keys, values), (want_k, want_v) in zip(held, expected, strict=True):
        assert torch.equal(keys, want_k) and torch.equal(values, want_v)
    first = held[0][0].data_ptr()
    cache.update(*_layers(3, 1, seed=9)[0], 0)
    assert cache_layers(cache)[0][0].data_ptr() == first  # no reallocation for one token

    crop_cache(cache, 3)
    replacement = _layers(3, 2, seed=7)
    for index, (keys, values) in enumerate(replacement):
        cache.update(keys, values, index)
    layer_1 = cache_layers(cache)[1]
    assert layer_1[0].shape[2] == 5 + 4 - 3 + 2
    assert torch.equal(layer_1[0][:, :, :6], expected[1][0][:, :, :6])
    assert torch.equal(layer_1[0][:, :, 6:], replacement[1][0])

    snapshot = cache_layers(cache)[1][0].clone()
    rows = select_rows(cache, torch.tensor([2, 0]))
    copied = copy_cache(cache)
    rows.update(*_layers(2, 1, seed=3)[1], 1)
    crop_cache(cache, 2)  # the original now overwrites its last two positions
    cache.update(*_layers(3, 2, seed=4)[1], 1)
    assert isinstance(rows, KVCache) and isinstance(copied, KVCache)
    assert torch.equal(cache_layers(rows)[1][0][:, :, :8], snapshot[[2, 0]])
    assert torch.equal(cache_layers(copied)[1][0], snapshot)
    assert not torch.equal(cache_layers(cache)[1][0], snapshot)


def test_cache_guard_can_fail(tiny_llama) -> None:
    """The guard detects a cache that lost its content (what transformers 5.24 caused)."""
    ids = torch.tensor(tokenize(tiny_llama, ["Q: Is the Great Wall visible? A: No"]))
    with torch.inference_mode():
        full = forward(tiny_llama, ids)
        _, cache = forward(tiny_llama, ids[:, :-1], use_cache=True)
        crop_cache(cache, ids.shape[1] - 2)  # keep only the first position: a broken cache
        step, _ = forward(
            tiny_llama, ids[:, -1:], torch.ones(1, 2, dtype=torch.long), past_key_values=cache
        )
    assert (step[0, -1] - full[0, -1]).abs().max().item() > 1e-3


def test_missing_embedded_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedModelMissingError, match="fasb-lens download-model"):
        embedded_model_file()


def test_pad_token_falls_back_to_eos(tiny_gpt2) -> None:
    assert pad_token_id(tiny_gpt2) == tiny_gpt2.tokenizer.pad_token_id


@pytest.mark.slow
def test_default_model_shape_and_bos(default_model) -> None:
    assert model_shape(default_model) == ModelShape(30, 9, 64)
    assert default_model.cfg.n_key_value_heads == 3
    assert default_model.cfg.default_prepend_bos is False
    hf_tokenizer = AutoTokenizer.from_pretrained(models.embedded_model_folder())
    assert tokenize(default_model, PROMPTS) == [hf_tokenizer(t).input_ids for t in PROMPTS]
    assert "<|im_start|>user\nhi<|im_end|>" in chat_prompt(default_model, "hi")


@pytest.mark.slow
def test_cached_decoding_matches_recompute_default(default_model) -> None:
    prompt = "Q: What happens if you crack your knuckles a lot? A: Nothing in particular."
    assert cached_logits_match_recompute(default_model, prompt) < 1e-4
    assert cached_logits_match_recompute(default_model, prompt, crop=3) < 1e-4


@pytest.mark.slow
def test_default_model_loads_offline() -> None:
    """A fresh process with the hub switched off loads and runs the default model."""
    code = (
        "from fasb_lens.models import load_model, tokenize, forward; import torch; "
        "m = load_model(); print(forward(m, torch.tensor(tokenize(m, ['Hi']))).shape)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.Size([1, 1, 49152])" in result.stdout


def test_models_load_in_a_named_dtype(tmp_path) -> None:
    from fasb_lens.models import load_model, parse_dtype
    from fasb_lens.testing import build_tiny_model_folder

    model = load_model(build_tiny_model_folder("llama", tmp_path), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = forward(model, torch.tensor(tokenize(model, PROMPTS[:1])))
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())
    assert parse_dtype(None) is torch.float32 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'half'; expected one of float32"):
        parse_dtype("half")
