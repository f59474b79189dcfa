"""The fast attention computes what the bridge computes, in both of the ways it runs:
step by step (float32, or hooks on the scores or pattern) and fused (bfloat16)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from fasb_lens.models import KVCache, forward, load_model, tokenize
from fasb_lens.models import attention as attention_module
from fasb_lens.models.attention import bridge_attention, fast_attention

HOOKS = ("hook_attn_scores", "hook_pattern", "hook_z")


@pytest.fixture(scope="module")
def tiny_llama_bf16(tiny_llama_folder):
    return load_model(tiny_llama_folder, device="cpu", dtype="bfloat16")


def _run(model, fast: bool, monkeypatch, calls, edit=None, watched=HOOKS):
    """Each call's logits and the ``watched`` hooks' values in layer 1, with or without
    the fast attention; and how many attention layers ran fused."""
    fused = []
    with monkeypatch.context() as patch, bridge_attention() if not fast else nullcontext():
        kernel = attention_module.F.scaled_dot_product_attention

        def counted(*args, **kwargs):
            fused.append(1)
            return kernel(*args, **kwargs)

        patch.setattr(attention_module.F, "scaled_dot_product_attention", counted)
        seen: list[torch.Tensor] = []

        def record(value, hook):
            seen.append(value.clone())

        hooks = [(f"blocks.1.attn.{name}", record) for name in watched]
        if edit is not None:
            hooks.insert(0, ("blocks.1.attn.hook_pattern", edit))
        cache = KVCache()
        logits = []
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            for ids, mask, positions in calls:
                out = forward(
                    model, ids, mask, past_key_values=cache, use_cache=True, position_ids=positions
                )
                logits.append(out[0].float())
    return logits, seen, len(fused)


def _calls(model):
    """A left-padded prefill, one decoding step, then a two-token step whose second token
    does not see the first (a 4D mask with explicit positions)."""
    vocab = model.cfg.d_vocab
    ids = torch.randint(3, vocab, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    step = torch.randint(3, vocab, (2, 1), generator=torch.Generator().manual_seed(1))
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    pair = torch.randint(3, vocab, (2, 2), generator=torch.Generator().manual_seed(2))
    tree = torch.cat([mask.bool(), torch.zeros(2, 2, dtype=torch.bool)], 1)[:, None, None]
    tree = tree.repeat(1, 1, 2, 1)
    tree[:, :, 0, 7] = tree[:, :, 1, 8] = True  # each sees itself, not its sibling
    positions = mask.sum(1, keepdim=True).repeat(1, 2)
    return [(ids, mask, None), (step, mask, None), (pair, tree, positions)]


@pytest.mark.parametrize("watched", [HOOKS, ("hook_z",)], ids=["pattern-hooked", "z-only"])
def test_stepwise_attention_equals_the_bridge(tiny_llama, monkeypatch, watched) -> None:
    """float32: every layer step by step, equal to the bridge up to float rounding."""
    calls = _calls(tiny_llama)
    plain, plain_hooks, _ = _run(tiny_llama, False, monkeypatch, calls, watched=watched)
    fast, fast_hooks, kernels = _run(tiny_llama, True, monkeypatch, calls, watched=watched)
    assert kernels == 0
    assert len(plain_hooks) == len(fast_hooks) == len(watched) * len(calls)
    for a, b in zip(plain + plain_hooks, fast + fast_hooks, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("watched", [HOOKS, ("hook_z",)], ids=["pattern-hooked", "z-only"])
def test_fused_attention_is_as_close_to_float32_as_the_bridge(
    tiny_llama, tiny_llama_bf16, monkeypatch, watched
) -> None:
    """bfloat16: the layers nobody watches run fused, the watched one step by step; the
    results are as close to the float32 model's as the bridge's own bfloat16 results."""
    model, calls = tiny_llama_bf16, _calls(tiny_llama_bf16)
    plain, plain_hooks, _ = _run(model, False, monkeypatch, calls, watched=watched)
    fast, fast_hooks, kernels = _run(model, True, monkeypatch, calls, watched=watched)
    watched_layers = 1 if "hook_pattern" in watched else 0
    assert kernels == (model.cfg.n_layers - watched_layers) * len(calls)
    assert [a.shape for a in plain_hooks] == [b.shape for b in fast_hooks]
    exact, exact_hooks, _ = _run(tiny_llama, False, monkeypatch, calls, watched=watched)
    triples = zip(exact + exact_hooks, plain + plain_hooks, fast + fast_hooks, strict=True)
    for reference, bridge, fused in triples:
        bridge_error = (bridge.float() - reference).abs().max()
        assert (fused.float() - reference).abs().max() <= 1.5 * bridge_error + 1e-3


def test_edits_at_the_pattern_act_as_in_the_bridge(tiny_llama, monkeypatch) -> None:
    def edit(pattern, hook):
        pattern = pattern.clone()
        pattern[:, 1] = pattern[:, 1].flip(-1)  # head 1 attends where it would not
        return pattern

    calls = _calls(tiny_llama)
    untouched, _, _ = _run(tiny_llama, True, monkeypatch, calls)
    plain, _, _ = _run(tiny_llama, False, monkeypatch, calls, edit)
    fast, _, _ = _run(tiny_llama, True, monkeypatch, calls, edit)
    assert not torch.allclose(untouched[0], fast[0], atol=1e-3)  # the edit matters
    for a, b in zip(plain, fast, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_fast_attention_covers_rotary_layers_only_and_restores(kind, request) -> None:
    model = request.getfixturevalue(f"tiny_{kind}")
    with fast_attention(model) as covered:
        assert covered == (model.cfg.n_layers if kind == "llama" else 0)
    with bridge_attention(), fast_attention(model) as covered:
        assert covered == 0
    for block in model.blocks:
        assert "forward" not in vars(block.attn)
        assert "forward" not in vars(block.attn.original_component)


@pytest.mark.slow
def test_fused_attention_on_the_default_model(default_model, monkeypatch) -> None:
    """SmolLM2 in bfloat16 (9 query heads over 3 key/value heads): each token's
    log-probability is as close to float32's with the fused attention as with the bridge."""
    low = load_model(dtype="bfloat16")
    text = "Q: What is the capital of France?\nA: The capital of France is Paris, on the Seine."
    ids = torch.tensor(tokenize(default_model, [text]))
    errors = {}
    for fast in (False, True):
        logits, _, kernels = _run(low, fast, monkeypatch, [(ids, None, None)], watched=())
        assert kernels == (low.cfg.n_layers if fast else 0)
        errors[fast] = logits
    exact, _, _ = _run(default_model, False, monkeypatch, [(ids, None, None)], watched=())

    def error(logits):
        chosen = ids[0, 1:, None]
        logprobs = [torch.log_softmax(x[0, :-1], -1).gather(-1, chosen) for x in (logits, exact[0])]
        return float((logprobs[0] - logprobs[1]).abs().mean())

    assert error(errors[True][0]) <= 1.2 * error(errors[False][0])
