"""The tree-forward engine: both of its users' forwards equal plain full forwards."""

from __future__ import annotations

import pytest
import torch

from fasb_lens.ablation import ScoredGroup
from fasb_lens.ablation.layout import Layout
from fasb_lens.logprobs import sequence_log_probs, target_log_probs
from fasb_lens.models import forward, hook_z_name, model_device, unembed
from fasb_lens.prefix import prefill
from fasb_lens.tree_forward import TreeRequest, TreeRows, forward_requests
from fasb_lens.trees import TokenTree

# token ids: prompts of different lengths (one of a single token: nothing to cache) and
# answers that begin alike
GROUPS = [
    ((5, 9, 13, 2, 7), ((3, 4, 8), (3, 4, 11, 6), (12,))),
    ((17,), ((3, 4), (9, 9, 9, 9, 9))),
    ((21, 22, 23), ((14, 15), (14, 16, 2), (30, 31))),
]


def reference(model, prompt, answer) -> tuple[float, torch.Tensor]:
    """One full forward of prompt + answer: the answer's summed log-probability and the
    ``hook_z`` of layer 1 at every position."""
    seen = {}

    def keep(z, hook):
        seen["z"] = z.clone()
        return z

    ids = torch.tensor([[*prompt, *answer]])
    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook_z_name(1), keep)]):
        logits = forward(model, ids)
    span = logits[:, len(prompt) - 1 : len(prompt) - 1 + len(answer)]
    return float(sequence_log_probs(span, torch.tensor([answer]))[0]), seen["z"][0]


def test_scoring_requests_equal_full_forwards(tiny_model) -> None:
    """Trees after their own prompt caches as the rows of shared forwards (padded prompts
    and trees), with ``hook_z`` kept at every node."""
    device = model_device(tiny_model)
    requests = []
    for prompt, answers in GROUPS:
        head = torch.tensor([prompt[:-1]], device=device)
        cache = prefill(tiny_model, head) if prompt[:-1] else None
        tree = TokenTree.build(prompt[-1], answers, leaves=True)
        ids = torch.tensor(tree.tokens, device=device)
        requests.append(TreeRequest(tree, ids, prompt=cache, capture=(1, 2)))
    outputs = forward_requests(tiny_model, requests, rows=2)
    for (prompt, answers), request, out in zip(GROUPS, requests, outputs, strict=True):
        for a, answer in enumerate(answers):
            total, z = reference(tiny_model, prompt, answer)
            assert float(out.totals[a]) == pytest.approx(total, abs=1e-4)
            path = list(request.tree.paths[a])  # the prompt's last token, then the answer
            assert torch.allclose(out.z[1][0, path], z[len(prompt) - 1 :], atol=1e-5)


def test_layout_bins_and_replicas_equal_full_forwards(tiny_model) -> None:
    """The ablation layout's left-padded prompt batch, its bins and replicated rows."""
    groups = [ScoredGroup(prompt, answers) for prompt, answers in GROUPS]
    layout = Layout.build(tiny_model, groups, bin_rows=2)
    with torch.inference_mode():
        values, cache = layout.run(tiny_model)
        replicated = [
            layout.score(
                tiny_model,
                answers,
                layout.forward(
                    tiny_model,
                    answers,
                    answers.inputs.repeat(3, 1),
                    [],
                    layout.past(answers, cache, replicas=3),
                    replicas=3,
                ),
                replicas=3,
            )
            for answers in layout.bins
        ]
    for part, copies in zip(values, replicated, strict=True):
        assert torch.allclose(copies, part.expand_as(copies), atol=1e-5)
    for (prompt, answers), mine in zip(GROUPS, layout.gather(values), strict=True):
        expected = [reference(tiny_model, prompt, answer)[0] for answer in answers]
        assert mine.tolist() == pytest.approx(expected, abs=1e-4)


def test_masks_and_reads(tiny_llama) -> None:
    """A right-padded row's mask from a prompt length equals the one from its columns;
    answers sharing nodes each read their own tokens there, and the one log-probability
    path equals a full log-softmax."""
    tree = TokenTree.build(7, [(1, 2, 3), (1, 2, 4), (5,)])
    columns = torch.tensor([True, True, False])
    assert torch.equal(tree.attention(2, room=3), tree.attention(columns))
    rows = TreeRows.after_caches([tree, TokenTree.build(8, [(9,)])], [2, 0], torch.device("cpu"))
    assert rows.mask.shape == (2, 1, 3, 2 + 3)  # the answers' last tokens are not fed
    assert torch.equal(rows.mask[1, 0, :, :2], torch.zeros(3, 2, dtype=torch.bool))
    assert rows.positions[0].tolist() == [2, 3, 4] and rows.answer_counts == [3, 1]
    with torch.inference_mode():
        final = torch.randn(2, 3, tiny_llama.cfg.d_model)
        totals = rows.log_probs(tiny_llama, final)[0]
        flat = final.reshape(-1, final.shape[-1])
        by_hand = [
            sum(float(target_log_probs(tiny_llama, flat[[n]], torch.tensor([t]))) for n, t in reads)
            for reads in ([(0, 1), (1, 2), (2, 3)], [(0, 1), (1, 2), (2, 4)], [(0, 5)], [(3, 9)])
        ]
        assert totals.tolist() == pytest.approx(by_hand, abs=1e-5)
        logits = unembed(tiny_llama, flat[:3]).float()
        full = torch.log_softmax(logits, -1)[[0, 1, 2], [1, 2, 3]]
        assert target_log_probs(tiny_llama, flat[:3], torch.tensor([1, 2, 3])).tolist() == (
            pytest.approx(full.tolist(), abs=1e-5)
        )
