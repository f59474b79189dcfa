"""How a log-probability metric's sequences are batched for per-head studies.

A :class:`~fasb_lens.ablation.metrics.LogProbMetric` scores answers after prompts (a
question, then each candidate answer). A :class:`Layout` runs every prompt once, all of
them left-padded into one batch, and keeps their KV cache; the answers of all prompts
then run in bins of similar length (:func:`length_bins`), each row the prompt's last
token followed by one answer less its last token (nothing is predicted from it), on top
of its own prompt's cache. Few forwards, little padding, and no prompt token run twice.
The bridge takes each token's position from the attention mask, so left padding changes
no number beyond float rounding.

The exact engine and attribution patching both run their forwards on this layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.ablation.metrics import ScoredGroup
from fasb_lens.interventions import Hooks, final_residual
from fasb_lens.models import build_cache, cache_layers, model_device, pad, pad_token_id
from fasb_lens.scoring import scored_log_probs

BIN_COST = 24
"""Padded positions worth one more forward: answers are split into one more length bin
when that saves more padded positions than this."""


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
    """Answers (of any prompts) of similar length that run together: ``ids`` are the
    scored rows, ``inputs`` what the forward runs (every column but the last, whose
    output would predict nothing)."""

    group: Int[Tensor, " rows"]  # each row's prompt
    place: Int[Tensor, " rows"]  # each row's index among all answers, in group order
    ids: Int[Tensor, "rows width"]  # the prompt's last token, then the answer
    mask: Int[Tensor, "rows width"]

    @property
    def inputs(self) -> Int[Tensor, "rows width-1"]:
        return self.ids[:, :-1]

    @property
    def input_mask(self) -> Int[Tensor, "rows width-1"]:
        return self.mask[:, :-1]


@dataclass
class Layout:
    """A metric's groups as one left-padded prompt batch and bins of answers.

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
        rows = [
            (g, [group.prefix[-1], *answer])
            for g, group in enumerate(groups)
            for answer in group.continuations
        ]
        bins = []
        for members in length_bins([len(ids) for _, ids in rows], max_rows=bin_rows):
            ids, mask = pad([rows[i][1] for i in members], pad_id=pad_id, device=device)
            group = torch.tensor([rows[i][0] for i in members], device=device)
            bins.append(AnswerBin(group, torch.tensor(members), ids, mask))
        return cls([len(group.continuations) for group in groups], prompt_ids, prompt_mask, bins)

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    def answer_mask(self, answers: AnswerBin, replicas: int = 1) -> Tensor:
        """The bin's input mask (repeated for ``replicas``) with its prompts' columns in
        front."""
        mask = answers.input_mask.repeat(replicas, 1)
        if self.prompt_mask is None:
            return mask
        front = self.prompt_mask.index_select(0, answers.group).repeat(replicas, 1)
        return torch.cat([front, mask], dim=1)

    def prompt_positions(self) -> Tensor:
        """``[groups, prompt]`` each prompt column's position in its own sequence."""
        assert self.prompt_mask is not None
        return self.prompt_mask.cumsum(1) - 1

    def answer_positions(self, answers: AnswerBin) -> Tensor:
        """``[rows, width-1]`` each input column's position in its own sequence."""
        width = answers.inputs.shape[1]
        start = torch.zeros_like(answers.group)
        if self.prompt_mask is not None:
            start = self.prompt_mask.sum(1).index_select(0, answers.group)
        return start[:, None] + torch.arange(width, device=start.device)

    def run(
        self,
        model: TransformerBridge,
        prompt_hooks: Hooks = (),
        bin_hooks: Callable[[AnswerBin], Hooks] = lambda answers: (),
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]] | None]:
        """The clean forwards: each bin's summed log-probabilities (``[rows]``, float64,
        differentiable when gradients are on) and the prompts' KV cache per layer."""
        cache = None
        if self.prompt_ids is not None:
            filled = build_cache([])
            final_residual(
                model, self.prompt_ids, self.prompt_mask, list(prompt_hooks), past=filled
            )
            cache = cache_layers(filled)
        values = []
        for answers in self.bins:
            final = final_residual(
                model,
                answers.inputs,
                self.answer_mask(answers),
                list(bin_hooks(answers)),
                past=self.past(answers, cache),
            )
            values.append(scored_log_probs(model, final, answers.ids, answers.mask))
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
        """Per-bin values (``[rows]`` each) back in group order, one tensor per group."""
        total = sum(self.sizes)
        flat = torch.zeros(total, dtype=torch.float64)
        for answers, part in zip(self.bins, values, strict=True):
            flat[answers.place] = part.detach().cpu().double()
        return list(flat.split(self.sizes))
