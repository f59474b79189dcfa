"""Attribution patching: every head's ablation effect, to first order, from one backward pass.

Replacing head ``h``'s output ``z_h`` by ``z'_h`` changes a metric ``M`` by about
``sum over positions of (z'_h - z_h) . dM/dz_h`` (adding ``v`` changes it by
``v . dM/dz_h``). One forward and one backward pass give ``dM/dz`` for every head at
every position at once, so the estimate for all heads costs about three forward passes.
It is exact for a metric linear in ``z_h`` and a guide elsewhere: compare it with the
exact grid (:func:`fasb_lens.ablation.exact.exact_effects`) before trusting it.

The gradient is taken through the model with its weights frozen (only activations carry
gradients); metrics reduced over many prompts are differentiated in two steps (the
reduction's gradient first, then each batch's), which keeps one batch's graph in memory.
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
from fasb_lens.ablation.metrics import LogProbMetric, Metric, ReadoutMetric
from fasb_lens.interventions import Hooks, StopForward, capture, heads_from, hook_name, hooked
from fasb_lens.models import forward, model_device, pad, pad_token_id, unembed


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
    with ``per_position``, each head's estimate split by absolute position (``[pos]``,
    summed over prompts).
    """
    if not metric.differentiable:
        raise ValueError(
            f"the {metric.name} metric is not differentiable: attribution patching needs "
            "a smooth metric (use the exact grid)"
        )
    layers = sorted({head.layer for head in edits})
    totals = {id(edit): 0.0 for head in edits for edit in edits[head]}
    positions: dict[int, Tensor] = {}
    runs = _logprob_runs if isinstance(metric, LogProbMetric) else _readout_runs
    baseline = None
    with _frozen(model), torch.enable_grad():
        bar = tqdm(desc="attribution", unit="batch", disable=not progress)
        for value, z, mask in runs(model, metric, layers):
            baseline = value
            for head, head_edits in edits.items():
                current = z.get(head.layer)
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
                    contribution = ((delta * grad).sum(-1) * mask).double()
                    totals[id(edit)] += float(contribution.sum())
                    if per_position:
                        by_position = contribution.sum(0).cpu()
                        previous = positions.get(id(edit), torch.zeros(0, dtype=torch.float64))
                        size = max(len(previous), len(by_position))
                        merged = torch.zeros(size, dtype=torch.float64)
                        merged[: len(previous)] += previous
                        merged[: len(by_position)] += by_position
                        positions[id(edit)] = merged
            bar.update(1)
        bar.close()
    assert baseline is not None
    estimates = {
        head: sum(totals[id(e)] for e in head_edits) / len(head_edits)
        for head, head_edits in edits.items()
    }
    per_head = {
        head: sum(positions.get(id(e), torch.zeros(1, dtype=torch.float64)) for e in head_edits)
        / len(head_edits)
        for head, head_edits in edits.items()
        if per_position
    }
    return baseline, estimates, per_head


def _logprob_runs(model: TransformerBridge, metric: LogProbMetric, layers: list[int]):
    """Per group: one forward of its full sequences and the backward of the metric's
    first-order share, yielding the captured ``hook_z`` (with ``.grad``) and the mask."""
    with torch.no_grad():
        clean = metric.group_log_probs(model)
    sums = [values.clone().requires_grad_(True) for values in clean]
    value = metric.reduce(sums)
    weights = torch.autograd.grad(value, sums)
    device = model_device(model)
    for group, weight in zip(metric.groups, weights, strict=True):
        sequences = [list(group.prefix) + list(ids) for ids in group.continuations]
        ids, mask = pad(sequences, pad_id=pad_token_id(model), side="right", device=device)
        z: dict[int, _Probe] = {}
        final: dict[int, Tensor] = {}
        stop = capture([0], final, site="final", stop_after_last=True)
        with hooked(model, _probes(layers, z), stop):
            try:
                forward(model, ids, mask)
            except StopForward:
                pass
        start = len(group.prefix) - 1
        rows, cols = [], []
        for row, continuation in enumerate(group.continuations):
            for t in range(len(continuation)):
                rows.append(row)
                cols.append(start + t)
        rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        logits = unembed(model, final[0][rows_t, cols_t]).float()
        picked = torch.log_softmax(logits, -1).gather(-1, ids[rows_t, cols_t + 1, None])[:, 0]
        per_row = torch.zeros(len(sequences), device=device).index_add(0, rows_t, picked)
        (per_row * weight.to(per_row)).sum().backward()
        yield float(value.detach()), z, mask.to(final[0].dtype)


def _readout_runs(model: TransformerBridge, metric: ReadoutMetric, layers: list[int]):
    """One forward of every prompt up to the highest layer read, and the backward of the
    metric's first-order share."""
    device = model_device(model)
    prompts = [list(ids) for ids in metric.prompts]
    ids, mask = pad(prompts, pad_id=pad_token_id(model), side="right", device=device)
    last = mask.sum(1) - 1
    rows = torch.arange(len(prompts), device=device)
    z: dict[int, _Probe] = {}
    read: dict[int, Tensor] = {}
    top = max(max(metric.layers), max(layers))
    reads = capture(
        [*metric.layers, top], read, select=lambda x: x[rows, last], stop_after_last=True
    )
    with hooked(model, _probes(layers, z), reads):
        try:
            forward(model, ids, mask)
        except StopForward:
            pass
    value = metric.reduce(heads_from(read, metric.heads))
    value.backward()
    yield float(value.detach()), z, mask.to(read[top].dtype)
