"""Exact per-head grids without wasted work.

Ablating a head in layer ``L`` leaves everything below ``L`` as in the clean run, so the
engine runs the clean model once, keeps the residual stream entering every layer, and for
each head starts the forward at its layer (:func:`fasb_lens.models.blocks_from`: the
blocks below are not run at all). The heads of a layer run together, one head per batch
replica. Where prompts share a prefix (a question followed by its candidate answers) the
prefix runs once per ablation and its KV cache serves every answer; only the positions a
metric scores go through the unembedding. Each number equals the head-by-head loop's
(:func:`loop_effects`) up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head
from fasb_lens.ablation.edits import Edit, edit_hooks
from fasb_lens.ablation.metrics import LogProbMetric, Metric, ReadoutMetric, ScoredGroup
from fasb_lens.interventions import StopForward, capture, final_residual, heads_from, hooked
from fasb_lens.models import (
    build_cache,
    cache_layers,
    forward,
    model_device,
    pad,
    pad_token_id,
)
from fasb_lens.scoring import scored_log_probs

LayerDone = Callable[[int, dict[Head, float]], None]
"""Called with a layer and its heads' values as soon as the layer is done."""


def loop_effects(
    model: TransformerBridge,
    metric: Metric,
    edits: dict[Head, list[Edit]],
    *,
    on_layer: LayerDone | None = None,
    progress: bool = True,
) -> tuple[float, dict[Head, float]]:
    """The reference: every edit of every head as its own full evaluation of ``metric``.

    Returns the clean value and each head's value (the mean over its edits).
    """
    baseline = metric(model)
    values: dict[Head, float] = {}
    bar = tqdm(total=len(edits), desc="ablation (loop)", unit="head", disable=not progress)
    for layer, heads in _by_layer(edits):
        done: dict[Head, float] = {}
        for head in heads:
            runs = []
            for edit in edits[head]:
                with hooked(model, edit_hooks([edit], layer)):
                    runs.append(metric(model))
            done[head] = sum(runs) / len(runs)
            bar.update(1)
        values.update(done)
        if on_layer is not None:
            on_layer(layer, done)
    bar.close()
    return baseline, values


def exact_effects(
    model: TransformerBridge,
    metric: Metric,
    edits: dict[Head, list[Edit]],
    *,
    max_rows: int = 96,
    on_layer: LayerDone | None = None,
    progress: bool = True,
) -> tuple[float, dict[Head, float]]:
    """Every head's value of ``metric`` under its edits, computed as described above.

    ``max_rows`` bounds the rows of one batched forward (ablations x prompts). Returns the
    clean value and each head's value (the mean over its edits).
    """
    if isinstance(metric, LogProbMetric):
        engine: _Engine = _LogProbEngine(model, metric, edits, max_rows)
    elif isinstance(metric, ReadoutMetric):
        engine = _ReadoutEngine(model, metric, edits, max_rows)
    else:
        raise TypeError(f"no exact engine for {type(metric).__name__}")
    return engine.run(on_layer, progress)


def _by_layer(edits: dict[Head, list[Edit]]) -> Iterator[tuple[int, list[Head]]]:
    layers: dict[int, list[Head]] = {}
    for head in edits:
        layers.setdefault(head.layer, []).append(head)
    yield from sorted(layers.items())


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Engine:
    """The layer-major schedule shared by both metric kinds."""

    def __init__(
        self, model: TransformerBridge, edits: dict[Head, list[Edit]], max_rows: int
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.model, self.edits, self.max_rows = model, edits, max_rows
        self.device = model_device(model)
        self.layers = sorted({head.layer for head in edits})

    def run(self, on_layer: LayerDone | None, progress: bool) -> tuple[float, dict[Head, float]]:
        with torch.inference_mode():
            baseline = self.prepare()
            values: dict[Head, float] = {}
            bar = tqdm(
                total=len(self.edits), desc="ablation (exact)", unit="head", disable=not progress
            )
            for layer, heads in _by_layer(self.edits):
                flat = [edit for head in heads for edit in self.edits[head]]
                results = self.layer(layer, flat)
                done = {
                    head: sum(results[id(e)] for e in self.edits[head]) / len(self.edits[head])
                    for head in heads
                }
                values.update(done)
                bar.update(len(heads))
                if on_layer is not None:
                    on_layer(layer, done)
            bar.close()
        return baseline, values

    def prepare(self) -> float:
        raise NotImplementedError

    def layer(self, layer: int, edits: list[Edit]) -> dict[int, float]:
        raise NotImplementedError


@dataclass
class _CleanGroup:
    """One scored group's clean run: the prompt's KV cache and the residual streams."""

    prompt_length: int
    cache: list[tuple[Tensor, Tensor]] | None  # per layer, batch 1
    prompt_resid: dict[int, Tensor]  # layer -> [1, prompt, d_model]
    answer_ids: Tensor  # [answers, width]: the prefix's last token, then each answer
    answer_mask: Tensor  # [answers, width]
    answer_resid: dict[int, Tensor]  # layer -> [answers, width, d_model]


class _LogProbEngine(_Engine):
    def __init__(self, model, metric: LogProbMetric, edits, max_rows) -> None:
        super().__init__(model, edits, max_rows)
        self.metric = metric
        self.clean: list[_CleanGroup] = []

    def prepare(self) -> float:
        sums = []
        for group in self.metric.groups:
            clean, values = self._clean(group)
            self.clean.append(clean)
            sums.append(values)
        return float(self.metric.reduce(sums))

    def _clean(self, group: ScoredGroup) -> tuple[_CleanGroup, Tensor]:
        prompt = list(group.prefix[:-1])
        rows = [[group.prefix[-1], *ids] for ids in group.continuations]
        ids, mask = pad(rows, pad_id=pad_token_id(self.model), side="right", device=self.device)
        prompt_resid: dict[int, Tensor] = {}
        cache = None
        if prompt:
            filled = build_cache([])
            inputs = torch.tensor([prompt], device=self.device)
            self._final(inputs, None, capture(self.layers, prompt_resid, site="resid_pre"), filled)
            cache = cache_layers(filled)
        answer_resid: dict[int, Tensor] = {}
        final = self._final(
            ids,
            self._mask(mask, len(prompt)),
            capture(self.layers, answer_resid, site="resid_pre"),
            self._past(cache, len(rows)),
        )
        clean = _CleanGroup(len(prompt), cache, prompt_resid, ids, mask, answer_resid)
        return clean, self._log_probs(final, ids, mask)

    def _mask(self, mask: Tensor, prompt_length: int) -> Tensor:
        """The answers' mask with the cached prompt's positions in front."""
        head = torch.ones(mask.shape[0], prompt_length, dtype=mask.dtype, device=self.device)
        return torch.cat([head, mask], dim=1)

    @staticmethod
    def _past(cache: list[tuple[Tensor, Tensor]] | None, rows: int):
        if cache is None:
            return None
        return build_cache([(_rows(keys, rows), _rows(values, rows)) for keys, values in cache])

    def _final(self, inputs: Tensor, mask: Tensor | None, hooks: list, past, start=None) -> Tensor:
        return final_residual(self.model, inputs, mask, hooks, past=past, start_at_layer=start)

    def _log_probs(self, final: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return scored_log_probs(self.model, final, ids, mask).cpu()

    def layer(self, layer: int, edits: list[Edit]) -> dict[int, float]:
        per_edit: dict[int, list[Tensor]] = {id(edit): [] for edit in edits}
        for clean in self.clean:
            answers = clean.answer_ids.shape[0]
            for chunk in _chunks(edits, self.max_rows // answers):
                sums = self._ablated(clean, layer, list(chunk))
                for edit, values in zip(chunk, sums, strict=True):
                    per_edit[id(edit)].append(values)
        return {key: float(self.metric.reduce(sums)) for key, sums in per_edit.items()}

    def _ablated(self, clean: _CleanGroup, layer: int, edits: list[Edit]) -> Tensor:
        """``[len(edits), answers]`` sums with each edit applied in its own replica."""
        replicas, answers = len(edits), clean.answer_ids.shape[0]
        cache = None
        if clean.cache is not None:
            filled = build_cache([])
            prompt = clean.prompt_resid[layer].expand(replicas, -1, -1)
            self._final(prompt, None, edit_hooks(edits, layer), filled, start=layer)
            below = [(_rows(k, replicas), _rows(v, replicas)) for k, v in clean.cache[:layer]]
            cache = [
                (keys.repeat_interleave(answers, 0), values.repeat_interleave(answers, 0))
                for keys, values in below + cache_layers(filled)[layer:]
            ]
        mask = clean.answer_mask.repeat(replicas, 1)
        rows = [edit for edit in edits for _ in range(answers)]
        final = self._final(
            clean.answer_resid[layer].repeat(replicas, 1, 1),
            self._mask(mask, clean.prompt_length) if cache is not None else mask,
            edit_hooks(rows, layer),
            self._past(cache, replicas * answers),
            start=layer,
        )
        sums = self._log_probs(final, clean.answer_ids.repeat(replicas, 1), mask)
        return sums.view(replicas, answers)


def _rows(tensor: Tensor, rows: int) -> Tensor:
    """A one-row tensor repeated to ``rows`` rows (a no-op when it has them)."""
    return tensor if tensor.shape[0] == rows else tensor.expand(rows, *tensor.shape[1:])


class _ReadoutEngine(_Engine):
    def __init__(self, model, metric: ReadoutMetric, edits, max_rows) -> None:
        super().__init__(model, edits, max_rows)
        self.metric = metric
        self.top = max(metric.layers)
        self.batches: list[tuple[Tensor, Tensor, Tensor, dict[int, Tensor], Tensor]] = []

    def prepare(self) -> float:
        prompts = [list(ids) for ids in self.metric.prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        self.order = order
        clean_z = []
        size = max(1, self.max_rows)
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            ids, mask = pad(
                [prompts[i] for i in rows],
                pad_id=pad_token_id(self.model),
                side="right",
                device=self.device,
            )
            last = mask.sum(1) - 1
            resid: dict[int, Tensor] = {}
            z = self._readouts(ids, mask, last, hooks=capture(self.layers, resid, site="resid_pre"))
            self.batches.append((ids, mask, last, resid, z))
            clean_z.append(z)
        self.clean_z = self._unsort(clean_z)
        return float(self.metric.reduce(self.clean_z))

    def _unsort(self, parts: list[Tensor]) -> Tensor:
        stacked = torch.cat(parts)
        out = torch.empty_like(stacked)
        out[torch.tensor(self.order)] = stacked
        return out

    def _readouts(self, inputs, mask, last, *, hooks, start=None, first=0) -> Tensor:
        """The read heads at each row's last token (from ``W_O``'s input, so after edits);
        the forward stops after the highest layer read."""
        store: dict[int, Tensor] = {}
        rows = torch.arange(inputs.shape[0], device=self.device)
        layers = [layer for layer in self.metric.layers if layer >= first]
        reads = capture(
            layers, store, site="w_o_in", select=lambda z: z[rows, last], stop_after_last=True
        )
        with hooked(self.model, hooks, reads):
            try:
                forward(self.model, inputs, mask, start_at_layer=start)
            except StopForward:
                pass
        return heads_from(store, [h for h in self.metric.heads if h.layer >= first]).cpu()

    def layer(self, layer: int, edits: list[Edit]) -> dict[int, float]:
        if layer > self.top:  # nothing read lies above this layer: no effect
            value = float(self.metric.reduce(self.clean_z))
            return {id(edit): value for edit in edits}
        above = torch.tensor([head.layer >= layer for head in self.metric.heads])
        parts: dict[int, list[Tensor]] = {id(edit): [] for edit in edits}
        for ids, mask, last, resid, clean in self.batches:
            n = ids.shape[0]
            for chunk in _chunks(edits, self.max_rows // n):
                rows = [edit for edit in chunk for _ in range(n)]
                z = self._readouts(
                    resid[layer].repeat(len(chunk), 1, 1),
                    mask.repeat(len(chunk), 1),
                    last.repeat(len(chunk)),
                    hooks=edit_hooks(rows, layer),
                    start=layer,
                    first=layer,
                )
                for index, edit in enumerate(chunk):
                    full = clean.clone()
                    full[:, above] = z[index * n : (index + 1) * n]
                    parts[id(edit)].append(full)
        return {key: float(self.metric.reduce(self._unsort(z))) for key, z in parts.items()}
