"""Attribution patching: every head's ablation effect, to first order, from one backward pass.

Replacing head ``h``'s output ``z_h`` by ``z'_h`` changes a metric ``M`` by about
``sum over positions of (z'_h - z_h) . dM/dz_h`` (adding ``v`` changes it by
``v . dM/dz_h``). One forward and one backward pass give ``dM/dz`` for every head at
every position at once, so the estimate for all heads costs about three forward passes
(the weights are frozen: the backward computes no weight gradients). It is exact for a
metric linear in ``z_h`` and a guide elsewhere: compare it with the exact grid
(:func:`fasb_lens.ablation.exact.exact_effects`) before trusting it.

A log-probability metric runs on its :class:`~fasb_lens.ablation.layout.Layout` (prompts
once, each prompt's answers as one token tree), a few questions at a time (about
``ATTRIBUTION_TOKENS`` positions, one graph in memory): a metric that is a mean over
questions backpropagates each chunk's share of the mean; any other one first takes a clean
pass for ``dM/d(sum)`` of every answer's summed log-probability and backpropagates the
sums weighted by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head
from fasb_lens.ablation.edits import Edit
from fasb_lens.ablation.layout import AnswerBin, Layout
from fasb_lens.ablation.metrics import LogProbMetric, Metric, ReadoutMetric
from fasb_lens.interventions import Hooks, StopForward, capture, heads_from, hook_name, hooked
from fasb_lens.models import forward, model_device, pad, pad_token_id
from fasb_lens.trees import TokenTree

ATTRIBUTION_TOKENS = 2048
"""Positions (prompts and answers) of the questions run together with gradients."""

BIN_ROWS = 64
"""Answer trees (prompts) per forward."""


@contextmanager
def _frozen(model: TransformerBridge) -> Iterator[None]:
    """Weights without gradients inside the block (activations still carry them)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@dataclass
class _Probe:
    """A head output seen during the forward and a zero added to it whose gradient is
    the metric's gradient with respect to that output."""

    value: Tensor
    zero: Tensor

    @property
    def grad(self) -> Tensor | None:
        return self.zero.grad


def _probes(layers: list[int], store: dict[int, _Probe]) -> Hooks:
    """Hooks adding a gradient-carrying zero to each layer's ``hook_z``."""

    def hook_for(layer: int):
        def hook(z: Tensor, hook: object) -> Tensor:
            zero = torch.zeros_like(z, requires_grad=True)
            store[layer] = _Probe(z.detach(), zero)
            return z + zero

        return hook

    return [(hook_name("z", layer), hook_for(layer)) for layer in layers]


@dataclass
class _Batch:
    """One forward's probed ``hook_z`` per layer (with gradients once the backward has
    run), the mask of its real positions and each position's place in its sequence."""

    z: dict[int, _Probe]
    mask: Tensor  # [rows, pos]
    positions: Tensor  # [rows, pos]


def attribution_effects(
    model: TransformerBridge,
    metric: Metric,
    edits: dict[Head, list[Edit]],
    *,
    per_position: bool = False,
    progress: bool = True,
) -> tuple[float, dict[Head, float], dict[Head, Tensor]]:
    """First-order estimate of every head's change in ``metric`` under its edits.

    Returns the clean value, each head's estimated change (the mean over its edits) and,
    with ``per_position``, each head's estimate split by position in the sequence
    (``[pos]``, summed over prompts).
    """
    if not metric.differentiable:
        raise ValueError(
            f"the {metric.name} metric is not differentiable: attribution patching needs "
            "a smooth metric (use the exact grid)"
        )
    layers = sorted({head.layer for head in edits})
    totals = {id(edit): torch.zeros(1, dtype=torch.float64) for h in edits for edit in edits[h]}
    with _frozen(model), torch.enable_grad():
        runs: _LogProbRuns | _ReadoutRuns = (
            _LogProbRuns(model, metric)
            if isinstance(metric, LogProbMetric)
            else _ReadoutRuns(model, metric)
        )
        bar = tqdm(desc="attribution", unit="batch", disable=not progress)
        for batch in runs.batches(layers):
            real = batch.mask.bool()
            where = batch.positions[real].cpu()
            for head, head_edits in edits.items():
                current = batch.z.get(head.layer)
                if current is None or current.grad is None:  # no path to the metric
                    continue
                grad = current.grad[:, :, head.head]
                here = current.value[:, :, head.head]
                for edit in head_edits:
                    if edit.add:
                        delta = edit.value.to(here).expand_as(here)
                    elif edit.value is None:
                        delta = -here
                    else:
                        delta = edit.value.to(here) - here
                    share = (delta * grad).sum(-1)[real].double().cpu()
                    totals[id(edit)] = _accumulate(totals[id(edit)], where, share)
            bar.update(1)
        bar.close()
    estimates, per_head = {}, {}
    for head, head_edits in edits.items():
        estimates[head] = sum(float(totals[id(e)].sum()) for e in head_edits) / len(head_edits)
        if per_position:
            width = max(len(totals[id(e)]) for e in head_edits)
            summed = torch.zeros(width, dtype=torch.float64)
            for edit in head_edits:
                summed[: len(totals[id(edit)])] += totals[id(edit)]
            per_head[head] = summed / len(head_edits)
    return runs.value, estimates, per_head


def _accumulate(total: Tensor, positions: Tensor, share: Tensor) -> Tensor:
    """``total`` (indexed by position) with ``share`` added at ``positions``."""
    width = int(positions.max()) + 1 if len(positions) else 0
    if width > len(total):
        total = torch.cat([total, total.new_zeros(width - len(total))])
    return total.index_add_(0, positions, share)


class _LogProbRuns:
    """A few questions at a time, the forward with gradients and the backward of the
    metric's share of those questions.

    For a metric that is a mean over groups (``group_term``), that share is the mean of
    the chunk's terms. For any other reduction, a clean pass first gives the metric's
    derivative with respect to every answer's summed log-probability, and a chunk's share
    is its sums weighted by those derivatives.
    """

    def __init__(self, model: TransformerBridge, metric: LogProbMetric) -> None:
        self.model, self.metric = model, metric
        self.weights: Tensor | None = None
        self.value = 0.0
        if metric.group_term is None:
            layout = Layout.build(model, metric.groups, bin_rows=BIN_ROWS)
            with torch.inference_mode():
                clean, _ = layout.run(model)
            sums = torch.cat(layout.gather(clean)).requires_grad_(True)
            value = metric.reduce(list(sums.split(layout.sizes)))
            (self.weights,) = torch.autograd.grad(value, sums)
            self.value = float(value.detach())

    def _chunks(self) -> Iterator[tuple[int, int]]:
        """Consecutive groups of about ``ATTRIBUTION_TOKENS`` positions."""
        groups = self.metric.groups
        begin, size = 0, 0
        for index, group in enumerate(groups):
            tree = TokenTree.build(group.prefix[-1], group.continuations)
            positions = len(group.prefix) - 1 + len(tree.tokens)
            if size and size + positions > ATTRIBUTION_TOKENS:
                yield begin, index
                begin, size = index, 0
            size += positions
        if begin < len(groups):
            yield begin, len(groups)

    def _share(self, layout: Layout, values: list[Tensor], begin: int) -> Tensor:
        """The chunk's part of the metric, as a function of its answers' sums."""
        order = torch.cat([answers.place for answers in layout.bins]).argsort()
        sums = torch.cat(values)[order.to(values[0].device)]
        term = self.metric.group_term
        if term is not None:
            parts = sums.split(layout.sizes)
            share = sum(term(begin + g, part) for g, part in enumerate(parts))
            share = share / len(self.metric.groups)
            self.value += float(share.detach())
            return share
        assert self.weights is not None
        start = sum(len(group.continuations) for group in self.metric.groups[:begin])
        return (sums * self.weights[start : start + len(sums)].to(sums)).sum()

    def batches(self, layers: list[int]) -> Iterator[_Batch]:
        for begin, end in self._chunks():
            layout = Layout.build(self.model, self.metric.groups[begin:end], bin_rows=BIN_ROWS)
            prompt_z: dict[int, _Probe] = {}
            answers_z: list[dict[int, _Probe]] = []

            def bin_hooks(answers: AnswerBin, store: list = answers_z) -> Hooks:
                store.append({})
                return _probes(layers, store[-1])

            values, _ = layout.run(self.model, _probes(layers, prompt_z), bin_hooks)
            self._share(layout, values, begin).backward()
            if layout.prompt_mask is not None:
                yield _Batch(prompt_z, layout.prompt_mask, layout.prompt_positions())
            for answers, z in zip(layout.bins, answers_z, strict=True):
                yield _Batch(z, answers.input_mask, layout.answer_positions(answers))


class _ReadoutRuns:
    """One forward of every prompt of a :class:`ReadoutMetric` up to the highest layer
    read, and the backward of the metric itself."""

    def __init__(self, model: TransformerBridge, metric: ReadoutMetric) -> None:
        self.model, self.metric = model, metric
        self.value = float("nan")

    def batches(self, layers: list[int]) -> Iterator[_Batch]:
        model, metric = self.model, self.metric
        device = model_device(model)
        prompts = [list(ids) for ids in metric.prompts]
        ids, mask = pad(prompts, pad_id=pad_token_id(model), side="right", device=device)
        last = mask.sum(1) - 1
        rows = torch.arange(len(prompts), device=device)
        z: dict[int, _Probe] = {}
        read: dict[int, Tensor] = {}
        top = max(max(metric.layers), max(layers))
        reads = capture(
            [*metric.layers, top],
            read,
            select=lambda x: x[rows.to(x.device), last.to(x.device)],
            stop_after_last=True,
        )
        with hooked(model, _probes(layers, z), reads):
            try:
                forward(model, ids, mask)
            except StopForward:
                pass
        value = metric.reduce(heads_from(read, metric.heads))
        value.backward()
        self.value = float(value.detach())
        positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
        yield _Batch(z, mask, positions)
