"""How a log-probability metric's sequences are batched for per-head studies.

A :class:`~fasb_lens.ablation.metrics.LogProbMetric` scores answers after prompts (a
question, then each candidate answer). A :class:`Layout` runs every prompt once, all of
them left-padded into one batch, and keeps their KV cache. The answers of one prompt then
run as one row, a token tree (:class:`~fasb_lens.trees.TokenTree`): the prompt's last
token, then every distinct answer prefix once (answers that begin alike share those
tokens), each token attending to its prompt and to its own ancestors and placed at its
depth after the prompt. An answer's last token is never an input (nothing is predicted
from it), and the log-softmax of a token shared by several answers is taken once, then
read for each of their next tokens. On 20 TruthfulQA questions the trees hold 1,629 of
the 2,739 positions that one row per answer would run.

The trees are binned once by size (:func:`~fasb_lens.tree_forward.length_bins`) and each
bin runs on the tree-forward engine (:class:`~fasb_lens.tree_forward.TreeRows`: masks,
positions, the forward and the answers' log-probabilities), its rows repeated once per
edit (``replicas``) by the exact engine; each row's prompt is picked from the batch's
cache. Neither the padding nor the tree changes a number beyond float rounding.

The exact engine and attribution patching both run their forwards on this layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.ablation.metrics import ScoredGroup
from fasb_lens.interventions import Hooks, final_residual
from fasb_lens.models import build_cache, cache_layers, model_device, pad, pad_token_id
from fasb_lens.tree_forward import KVLayers, TreeRows, length_bins, selected_cache
from fasb_lens.trees import TokenTree


@dataclass
class AnswerBin:
    """Answer trees of similar size that run together, one row per prompt: ``group`` gives
    each row's prompt, ``place`` each answer's index among all answers in group order
    (answers numbered within the bin, row after row)."""

    group: Int[Tensor, " rows"]
    place: Int[Tensor, " answers"]
    rows: TreeRows

    @property
    def inputs(self) -> Int[Tensor, "rows width"]:
        """The trees' tokens."""
        return self.rows.tokens

    @property
    def input_mask(self) -> Bool[Tensor, "rows width"]:
        """Which slots hold a node (the others are padding)."""
        return self.rows.real

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
        prompts = [list(group.prefix[:-1]) for group in groups]
        prompt_ids = prompt_mask = None
        starts = torch.zeros(len(groups), dtype=torch.long, device=device)
        if any(prompts):
            pad_id = pad_token_id(model)
            prompt_ids, prompt_mask = pad(prompts, pad_id=pad_id, side="left", device=device)
            starts = prompt_mask.sum(1)
        trees = [TokenTree.build(group.prefix[-1], group.continuations) for group in groups]
        first = [0]
        for group in groups:
            first.append(first[-1] + len(group.continuations))
        bins = []
        for members in length_bins([len(tree) for tree in trees], max_rows=bin_rows):
            group = torch.tensor(members, device=device)
            columns = None if prompt_mask is None else prompt_mask.index_select(0, group).bool()
            rows = TreeRows([trees[g] for g in members], columns, starts.index_select(0, group))
            place = [index for g in members for index in range(first[g], first[g + 1])]
            bins.append(AnswerBin(group, torch.tensor(place), rows))
        return cls([len(group.continuations) for group in groups], prompt_ids, prompt_mask, bins)

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    def prompt_positions(self) -> Tensor:
        """``[groups, prompt]`` each prompt column's position in its own sequence."""
        assert self.prompt_mask is not None
        return self.prompt_mask.cumsum(1) - 1

    def answer_positions(self, answers: AnswerBin) -> Int[Tensor, "rows width"]:
        """Each node's position in its own sequence (its prompt's length plus its depth
        in the tree)."""
        return answers.rows.positions

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
    ) -> Float[Tensor, "replicas_rows width d_model"]:
        """The final residual stream of a bin's trees (``replicas`` copies of its rows):
        ``inputs`` are their tokens, or the residual stream entering ``start_at_layer``."""
        return answers.rows.run(
            model, inputs, list(hooks), past=past, start_at_layer=start_at_layer, replicas=replicas
        )

    def score(
        self, model: TransformerBridge, answers: AnswerBin, final: Tensor, replicas: int = 1
    ) -> Float[Tensor, "replicas answers"]:
        """Each answer's summed log-probability (float64, differentiable) from
        :meth:`forward`'s final residual stream: one unembedding per node (every node
        predicts a token), read for every token it predicts."""
        return answers.rows.log_probs(model, final, replicas)

    def run(
        self,
        model: TransformerBridge,
        prompt_hooks: Hooks = (),
        bin_hooks: Callable[[AnswerBin], Hooks] = lambda answers: (),
    ) -> tuple[list[Tensor], KVLayers | None]:
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
        cache: KVLayers | None,
        *,
        replicas: int = 1,
        ablated: KVLayers | None = None,
    ):
        """The KV cache for a bin's rows (repeated for ``replicas``): each row's own prompt
        from ``cache`` (one row per group) - or, from layer ``len(cache) - len(ablated)``
        on, from ``ablated`` (row ``replica * groups + group``)."""
        if cache is None:
            return None
        group = answers.group
        above: KVLayers = []
        if ablated is not None:
            offsets = torch.arange(replicas, device=group.device).repeat_interleave(len(group))
            above = selected_cache(ablated, offsets * self.n_groups + group.repeat(replicas))
        below = selected_cache(cache[: len(cache) - len(above)], group.repeat(replicas))
        return build_cache(below + above)

    def gather(self, values: list[Tensor]) -> list[Tensor]:
        """Per-bin values (``[answers]`` each) back in group order, one tensor per group."""
        total = sum(self.sizes)
        flat = torch.zeros(total, dtype=torch.float64)
        for answers, part in zip(self.bins, values, strict=True):
            flat[answers.place] = part.detach().cpu().double()
        return list(flat.split(self.sizes))
