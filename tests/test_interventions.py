"""The hooks of fasb_lens: positions, steering, replacing and capturing activations."""

from __future__ import annotations

import pytest
import torch

from fasb_lens._types import Head
from fasb_lens.interventions import (
    StopForward,
    add_at_positions,
    capture,
    heads_from,
    hooked,
    position_mask,
    replace_heads,
    steer_heads,
    steer_residual,
)
from fasb_lens.models import forward, tokenize

PROMPT = "Q: Is the sky blue? A: Yes, on a clear day."


def run(model, *hook_lists):
    ids = torch.tensor(tokenize(model, [PROMPT]))
    store: dict[int, torch.Tensor] = {}
    layers = list(range(model.cfg.n_layers))
    with torch.inference_mode(), hooked(model, *hook_lists, capture(layers, store)):
        logits = forward(model, ids)
    return logits, store


def test_position_mask_rules() -> None:
    assert position_mask("last", 1, 3).tolist() == [[False, False, True]]
    assert position_mask(5, 1, 3, offset=4).tolist() == [[False, True, True]]
    assert position_mask(torch.tensor([1, 2]), 2, 3).tolist() == [
        [False, True, True],
        [False, False, True],
    ]
    with pytest.raises(ValueError, match=r"per-row start positions must be \[2\]"):
        position_mask(torch.tensor([1]), 2, 3)
    with pytest.raises(ValueError, match="positions must be 'last', 'all'"):
        position_mask("first", 1, 3)  # type: ignore[arg-type]


def test_add_at_positions_leaves_other_bits_alone() -> None:
    x = torch.randn(2, 4, 3, 5)
    amount = torch.randn(2, 5)
    out = add_at_positions(x, amount, torch.tensor([1.0, 0.0]), 2, heads=[0, 2])
    assert torch.equal(out[:, :2], x[:, :2]) and torch.equal(out[:, :, 1], x[:, :, 1])
    assert torch.equal(out[1], x[1])  # strength 0 on that row
    torch.testing.assert_close(out[0, 2:, [0, 2]], x[0, 2:, [0, 2]] + amount)
    residual = torch.randn(1, 3, 5)
    torch.testing.assert_close(
        add_at_positions(residual, amount[0], 2.0, "last")[0, 2], residual[0, 2] + 2 * amount[0]
    )
    per_position = torch.tensor([[0.0, 1.5, -2.0, 0.0], [3.0, 0.0, 0.0, 0.5]])
    out = add_at_positions(x, amount, per_position, "all", heads=[0, 2])
    for row in range(2):
        for pos in range(4):
            expected = x[row, pos, [0, 2]] + per_position[row, pos] * amount
            torch.testing.assert_close(out[row, pos, [0, 2]], expected)
    assert torch.equal(out[0, 0], x[0, 0]) and torch.equal(out[1, 1], x[1, 1])  # strength 0


def test_steer_replace_and_capture_on_a_model(tiny_llama) -> None:
    plain_logits, plain = run(tiny_llama)
    head, vector = Head(1, 2), torch.randn(1, 16)
    _, steered = run(tiny_llama, steer_heads([head], vector, 3.0, positions="all"))
    torch.testing.assert_close(
        steered[1][0, :, 2] - plain[1][0, :, 2], (3 * vector).expand(plain[1].shape[1], -1)
    )
    assert torch.equal(steered[0], plain[0])  # captured before later layers, and upstream alone
    _, zeroed = run(tiny_llama, replace_heads([head]))
    assert torch.equal(zeroed[1][0, :, 2], torch.zeros_like(zeroed[1][0, :, 2]))
    assert torch.equal(zeroed[1][0, :, 1], plain[1][0, :, 1])
    mean = torch.full((16,), 0.5)
    _, replaced = run(tiny_llama, replace_heads([head], {head: mean}))
    assert torch.equal(replaced[1][0, :, 2], mean.expand_as(replaced[1][0, :, 2]))
    torch.testing.assert_close(
        heads_from(plain, [head, Head(0, 0)]),
        torch.stack([plain[1][..., 2, :], plain[0][..., 0, :]], dim=-2),
    )
    residual = torch.randn(tiny_llama.cfg.d_model)
    logits, _ = run(tiny_llama, steer_residual(1, residual, 0.0, positions="all"))
    assert torch.equal(logits, plain_logits)
    with pytest.raises(ValueError, match="2 heads but 1 vectors"):
        steer_heads([head, Head(0, 0)], vector, 1.0)


def test_capture_can_stop_the_forward(tiny_llama) -> None:
    store: dict[int, torch.Tensor] = {}
    ids = torch.tensor(tokenize(tiny_llama, [PROMPT]))
    with (
        torch.inference_mode(),
        hooked(tiny_llama, capture([0, 1], store, select=lambda z: z[:, -1], stop_after_last=True)),
    ):
        with pytest.raises(StopForward):
            forward(tiny_llama, ids)
    assert sorted(store) == [0, 1] and store[1].shape == (1, 4, 16)
