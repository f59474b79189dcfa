"""How a log-probability metric's sequences are batched for per-head studies.

A :class:`~fasb_lens.ablation.metrics.LogProbMetric` scores answers after prompts (a
question, then each candidate answer). A :class:`Layout` runs every prompt once, all of
them left-padded into one batch, and keeps their KV cache. The answers of one prompt then
run as one row, a token tree (:class:`~fasb_lens.trees.TokenTree`): the prompt's last
token, then every distinct answer prefix once (answers that begin alike share those
tokens), each token attending to its prompt and to its own ancestors and placed at its
depth after the prompt. An answer's last token is never an input (nothing is predicted
from it), and the log-softmax of a token shared by several answers is taken once, then
read for each of their next tokens. Trees of similar size run together
(:func:`length_bins`). On 20 TruthfulQA questions the trees hold 1,629 of the 2,739
positions that one row per answer would run. The bridge takes an explicit
``[rows, 1, pos, past + pos]`` mask as given and each token's position from
``position_ids``, so neither the padding nor the tree changes a number beyond float
rounding.

The exact engine and attribution patching both run their forwards on this layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.ablation.metrics import ScoredGroup
from fasb_lens.interventions import Hooks, final_residual
from fasb_lens.models import (
    build_cache,
    cache_layers,
    model_device,
    pad,
    pad_token_id,
    target_log_probs,
)
from fasb_lens.trees import TokenTree

BIN_COST = 24
"""Padded positions worth one more forward: answer trees are split into one more bin of
similar sizes when that saves more padded positions than this."""


def length_bins(
    lengths: Sequence[int], bin_cost: int | None = None, *, max_rows: int | None = None
) -> list[list[int]]:
    """Indices of ``lengths`` split into bins of similar length, each padded to its
    longest: the split (of the sorted lengths, at most ``max_rows`` per bin) with the
    fewest padded positions plus ``bin_cost`` (default :data:`BIN_COST`) per bin."""
    bin_cost = BIN_COST if bin_cost is None else bin_cost
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    widest = n if max_rows is None else max(1, max_rows)
    best = [0.0] + [float("inf")] * n  # best[j]: the cost of bins covering order[:j]
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for begin in range(max(0, end - widest), end):
            cost = best[begin] + bin_cost + (end - begin) * sorted_lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    bins, end = [], n
    while end > 0:
        bins.append(order[cut[end] : end])
        end = cut[end]
    return bins[::-1]


@dataclass
class AnswerBin:
    """Answer trees of similar size that run together, one row per prompt. The ``read_``
    tensors say which node's output scores which token of which answer (answers numbered
    within the bin; ``place`` gives each one's index among all answers in group order)."""

    group: Int[Tensor, " rows"]  # each row's prompt
    place: Int[Tensor, " answers"]
    inputs: Int[Tensor, "rows width"]  # the trees' tokens
    input_mask: Int[Tensor, "rows width"]  # 1 for a node, 0 for padding
    sees: Bool[Tensor, "rows width width"]
    depth: Int[Tensor, "rows width"]
    read_at: Int[Tensor, " reads"]  # the reading node, counted over the bin's real nodes
    read_token: Int[Tensor, " reads"]
    read_answer: Int[Tensor, " reads"]

    @property
    def n_answers(self) -> int:
        return len(self.place)


@dataclass
class Layout:
    """A metric's groups as one left-padded prompt batch and bins of answer trees.

    ``prompt_ids`` is ``None`` when no group has a prompt before its last token.
    """

    sizes: list[int]  # answers per group
    prompt_ids: Int[Tensor, "groups prompt"] | None
    prompt_mask: Int[Tensor, "groups prompt"] | None
    bins: list[AnswerBin]

    @classmethod
    def build(
        cls, model: TransformerBridge, groups: Sequence[ScoredGroup], *, bin_rows: int
    ) -> Layout:
        device = model_device(model)
        pad_id = pad_token_id(model)
        prompts = [list(group.prefix[:-1]) for group in groups]
        prompt_ids = prompt_mask = None
        if any(prompts):
            prompt_ids, prompt_mask = pad(prompts, pad_id=pad_id, side="left", device=device)
        trees = [TokenTree.build(group.prefix[-1], group.continuations) for group in groups]
        first = [0]
        for group in groups:
            first.append(first[-1] + len(group.continuations))
        bins = []
        for members in length_bins([len(t.tokens) for t in trees], max_rows=bin_rows):
            ids, mask = pad([trees[g].tokens for g in members], pad_id=pad_id, device=device)
            width = ids.shape[1]
            depth = torch.zeros_like(ids)
            reads: list[tuple[int, int, int]] = []
            place: list[int] = []
            nodes = 0  # real nodes in the rows above
            for row, g in enumerate(members):
                depth[row, : len(trees[g].depth)] = torch.tensor(trees[g].depth)
                reads += [(nodes + n, t, a + len(place)) for n, t, a in trees[g].reads]
                place += range(first[g], first[g + 1])
                nodes += len(trees[g].tokens)
            read = torch.tensor(reads, dtype=torch.long, device=device).T
            bins.append(
                AnswerBin(
                    group=torch.tensor(members, device=device),
                    place=torch.tensor(place),
                    inputs=ids,
                    input_mask=mask,
                    sees=torch.stack([trees[g].sees(width) for g in members]).to(device),
                    depth=depth,
                    read_at=read[0],
                    read_token=read[1],
                    read_answer=read[2],
                )
            )
        return cls([len(group.continuations) for group in groups], prompt_ids, prompt_mask, bins)

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    def attention(self, answers: AnswerBin, replicas: int = 1) -> Bool[Tensor, "r 1 q k"]:
        """The bin's ``[rows, 1, width, prompt + width]`` attention mask (repeated for
        ``replicas``): each node sees its prompt's real columns and its tree ancestors."""
        tree = answers.sees
        if self.prompt_mask is not None:
            front = self.prompt_mask.index_select(0, answers.group).bool()
            front = front[:, None, :] & answers.input_mask.bool()[:, :, None]
            tree = torch.cat([front, tree], dim=2)
        return tree[:, None].repeat(replicas, 1, 1, 1)

    def prompt_positions(self) -> Tensor:
        """``[groups, prompt]`` each prompt column's position in its own sequence."""
        assert self.prompt_mask is not None
        return self.prompt_mask.cumsum(1) - 1

    def answer_positions(self, answers: AnswerBin) -> Tensor:
        """``[rows, width]`` each node's position in its own sequence (its prompt's
        length plus its depth in the tree)."""
        start = torch.zeros_like(answers.group)
        if self.prompt_mask is not None:
            start = self.prompt_mask.sum(1).index_select(0, answers.group)
        return start[:, None] + answers.depth

    def forward(
        self,
        model: TransformerBridge,
        answers: AnswerBin,
        inputs: Tensor,
        hooks: Hooks,
        past,
        *,
        replicas: int = 1,
        start_at_layer: int | None = None,
    ) -> Tensor:
        """The final residual stream of a bin's trees (``replicas`` copies of its rows):
        ``inputs`` are their tokens, or the residual stream entering ``start_at_layer``."""
        return final_residual(
            model,
            inputs,
            self.attention(answers, replicas),
            list(hooks),
            past=past,
            start_at_layer=start_at_layer,
            position_ids=self.answer_positions(answers).repeat(replicas, 1),
        )

    def score(
        self, model: TransformerBridge, answers: AnswerBin, final: Tensor, replicas: int = 1
    ) -> Tensor:
        """``[replicas, answers]`` each answer's summed log-probability (float64,
        differentiable) from :meth:`forward`'s final residual stream: one unembedding per
        node (every node predicts a token), read for every token it predicts."""
        real = answers.input_mask.bool()
        offsets = torch.arange(replicas, device=final.device)
        picked = target_log_probs(
            model,
            final[real.repeat(replicas, 1)],
            answers.read_token.repeat(replicas),
            at=(offsets[:, None] * int(real.sum()) + answers.read_at[None]).flatten(),
        )
        slots = (offsets[:, None] * answers.n_answers + answers.read_answer[None]).flatten()
        totals = torch.zeros(replicas * answers.n_answers, dtype=torch.float64, device=final.device)
        return totals.index_add_(0, slots, picked.double()).view(replicas, answers.n_answers)

    def run(
        self,
        model: TransformerBridge,
        prompt_hooks: Hooks = (),
        bin_hooks: Callable[[AnswerBin], Hooks] = lambda answers: (),
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]] | None]:
        """The clean forwards: each bin's summed log-probabilities of its answers
        (``[answers]``, float64, differentiable when gradients are on) and the prompts' KV
        cache per layer."""
        cache = None
        if self.prompt_ids is not None:
            filled = build_cache([])
            final_residual(
                model, self.prompt_ids, self.prompt_mask, list(prompt_hooks), past=filled
            )
            cache = cache_layers(filled)
        values = []
        for answers in self.bins:
            final = self.forward(
                model, answers, answers.inputs, bin_hooks(answers), self.past(answers, cache)
            )
            values.append(self.score(model, answers, final)[0])
        return values, cache

    def past(
        self,
        answers: AnswerBin,
        cache: list[tuple[Tensor, Tensor]] | None,
        *,
        replicas: int = 1,
        ablated: list[tuple[Tensor, Tensor]] | None = None,
    ):
        """The KV cache for a bin's rows (repeated for ``replicas``): each row's own prompt
        from ``cache`` (one row per group) - or, from layer ``len(cache) - len(ablated)``
        on, from ``ablated`` (row ``replica * groups + group``)."""
        if cache is None:
            return None
        group = answers.group
        above: list[tuple[Tensor, Tensor]] = []
        if ablated is not None:
            offsets = torch.arange(replicas, device=group.device).repeat_interleave(len(group))
            rows = offsets * self.n_groups + group.repeat(replicas)
            above = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in ablated]
        below = [
            (
                k.index_select(0, group).repeat(replicas, 1, 1, 1),
                v.index_select(0, group).repeat(replicas, 1, 1, 1),
            )
            for k, v in cache[: len(cache) - len(above)]
        ]
        return build_cache(below + above)

    def gather(self, values: list[Tensor]) -> list[Tensor]:
        """Per-bin values (``[answers]`` each) back in group order, one tensor per group."""
        total = sum(self.sizes)
        flat = torch.zeros(total, dtype=torch.float64)
        for answers, part in zip(self.bins, values, strict=True):
            flat[answers.place] = part.detach().cpu().double()
        return list(flat.split(self.sizes))
