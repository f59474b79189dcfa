"""Exact per-head grids without wasted work.

Ablating a head in layer ``L`` leaves everything below ``L`` as in the clean run, so the
engine runs the clean model once, keeps the residual stream entering every layer, and for
each head starts the forward at its layer (:func:`fasb_lens.models.blocks_from`: the
blocks below are not run at all). The heads of a layer run together, one head per batch
replica. A log-probability metric runs on its :class:`~fasb_lens.ablation.layout.Layout`:
the prompts of all questions once per ablation, left-padded into one batch, their KV
cache serving every answer, and each question's answers as one token tree (shared
beginnings run once), trees of similar size in one forward, so that few forwards are
needed and little of each is padding. Only the positions a metric scores go through the
unembedding, each once however many answers read it. Each number equals the
head-by-head loop's (:func:`loop_effects`) up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head
from fasb_lens.ablation.edits import Edit, edit_hooks
from fasb_lens.ablation.layout import AnswerBin, Layout
from fasb_lens.ablation.metrics import LogProbMetric, Metric, ReadoutMetric
from fasb_lens.interventions import StopForward, capture, final_residual, heads_from, hooked
from fasb_lens.models import (
    build_cache,
    cache_layers,
    forward,
    model_device,
    pad,
    pad_token_id,
)

LayerDone = Callable[[int, dict[Head, float]], None]
"""Called with a layer and its heads' values as soon as the layer is done."""


def loop_effects(
    model: TransformerBridge,
    metric: Metric,
    edits: dict[Head, list[Edit]],
    *,
    on_layer: LayerDone | None = None,
    progress: bool = True,
    layers: Collection[int] | None = None,
) -> tuple[float, dict[Head, float]]:
    """The reference: every edit of every head as its own full evaluation of ``metric``.

    Returns the clean value and each head's value (the mean over its edits); with
    ``layers``, only the heads of those layers are run (a process's share).
    """
    baseline = metric(model)
    values: dict[Head, float] = {}
    bar = tqdm(total=len(edits), desc="ablation (loop)", unit="head", disable=not progress)
    for layer, heads in _by_layer(edits, layers):
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
    max_rows: int = 256,
    on_layer: LayerDone | None = None,
    progress: bool = True,
    layers: Collection[int] | None = None,
) -> tuple[float, dict[Head, float]]:
    """Every head's value of ``metric`` under its edits, computed as described above.

    ``max_rows`` bounds the rows of one batched forward (ablations x prompts; for a
    log-probability metric a row is one prompt's whole answer tree, tens of positions).
    Returns the clean value and each head's value (the mean over its edits). With
    ``layers`` only those layers' heads are run (a process's share): the batches are laid
    out for all of ``edits``, so each value is the one a run of every layer gives.
    """
    if isinstance(metric, LogProbMetric):
        engine: _Engine = _LogProbEngine(model, metric, edits, max_rows)
    elif isinstance(metric, ReadoutMetric):
        engine = _ReadoutEngine(model, metric, edits, max_rows)
    else:
        raise TypeError(f"no exact engine for {type(metric).__name__}")
    return engine.run(on_layer, progress, layers)


def exact_flops(
    model: TransformerBridge,
    metric: LogProbMetric,
    edits: dict[Head, list[Edit]],
    *,
    max_rows: int = 256,
) -> int:
    """The floating-point operations of the matrix products :func:`exact_effects` runs
    for a log-probability metric: the clean pass, then every edit's forward from its
    head's layer up, each over the padded prompt batch and the answer bins (the blocks'
    weight products and attention's two products) and the unembedding of every scored
    node.

    Divided by a machine's matrix-product rate, it is the least time any schedule that
    computes these positions exactly can take there, whatever its overheads.
    """
    layout = _LogProbEngine(model, metric, edits, max_rows).layout
    cfg = model.cfg
    heads = cfg.n_heads * cfg.d_head
    kv_heads = (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * cfg.d_head
    mlp = (3 if getattr(cfg, "gated_mlp", False) else 2) * cfg.d_model * cfg.d_mlp
    weights = cfg.d_model * (2 * heads + 2 * kv_heads) + mlp  # Q, O; K, V; the MLP
    attention = 4 * heads  # scores and mixing, per token and key position
    prompt = 0 if layout.prompt_ids is None else layout.prompt_ids.shape[1]
    runs = [(layout.n_groups, prompt, prompt)] if prompt else []
    runs += [(len(b.inputs), b.inputs.shape[1], prompt + b.inputs.shape[1]) for b in layout.bins]
    per_layer = sum(rows * width * (2 * weights + attention * keys) for rows, width, keys in runs)
    nodes = sum(int(b.input_mask.sum()) for b in layout.bins)
    unembed = nodes * 2 * cfg.d_model * cfg.d_vocab
    n_layers = cfg.n_layers
    clean = n_layers * per_layer + unembed
    return clean + sum(
        len(edit_list) * ((n_layers - head.layer) * per_layer + unembed)
        for head, edit_list in edits.items()
    )


def _by_layer(
    edits: dict[Head, list[Edit]], only: Collection[int] | None = None
) -> Iterator[tuple[int, list[Head]]]:
    layers: dict[int, list[Head]] = {}
    for head in edits:
        if only is None or head.layer in only:
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

    def run(
        self,
        on_layer: LayerDone | None,
        progress: bool,
        layers: Collection[int] | None = None,
    ) -> tuple[float, dict[Head, float]]:
        with torch.inference_mode():
            baseline = self.prepare()
            values: dict[Head, float] = {}
            bar = tqdm(
                total=len(self.edits), desc="ablation (exact)", unit="head", disable=not progress
            )
            for layer, heads in _by_layer(self.edits, layers):
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


class _LogProbEngine(_Engine):
    """The metric's :class:`~fasb_lens.ablation.layout.Layout`: per chunk of edits, the
    prompts of every group in one batch, then each bin of answers on their cache."""

    def __init__(self, model, metric: LogProbMetric, edits, max_rows) -> None:
        super().__init__(model, edits, max_rows)
        self.metric = metric
        widest = max(
            (sum(len(edits[h]) for h in heads) for _, heads in _by_layer(edits)), default=1
        )
        # rows of one bin: enough that a layer's edits fill about ``max_rows`` rows
        self.bin_rows = max(1, max_rows // widest)
        self.layout = Layout.build(model, metric.groups, bin_rows=self.bin_rows)
        self.prompt_resid: dict[int, Tensor] = {}
        self.answer_resid: list[dict[int, Tensor]] = []
        self.cache: list[tuple[Tensor, Tensor]] | None = None

    def prepare(self) -> float:
        def bin_hooks(answers: AnswerBin):
            self.answer_resid.append({})
            return capture(self.layers, self.answer_resid[-1], site="resid_pre")

        prompt_hooks = capture(self.layers, self.prompt_resid, site="resid_pre")
        values, self.cache = self.layout.run(self.model, prompt_hooks, bin_hooks)
        return float(self.metric.reduce(self.layout.gather(values)))

    def layer(self, layer: int, edits: list[Edit]) -> dict[int, float]:
        per_edit = {id(edit): [] for edit in edits}
        for chunk in _chunks(edits, max(1, self.max_rows // self.bin_rows)):
            chunk = list(chunk)
            ablated = self._ablated_prompts(layer, chunk)
            for answers, resid in zip(self.layout.bins, self.answer_resid, strict=True):
                final = self.layout.forward(
                    self.model,
                    answers,
                    resid[layer].repeat(len(chunk), 1, 1),
                    edit_hooks([edit for edit in chunk for _ in answers.group], layer),
                    self.layout.past(answers, self.cache, replicas=len(chunk), ablated=ablated),
                    replicas=len(chunk),
                    start_at_layer=layer,
                )
                sums = self.layout.score(self.model, answers, final, replicas=len(chunk))
                for edit, values in zip(chunk, sums, strict=True):
                    per_edit[id(edit)].append(values)
        return {
            key: float(self.metric.reduce(self.layout.gather(values)))
            for key, values in per_edit.items()
        }

    def _ablated_prompts(self, layer: int, edits: list[Edit]) -> list[tuple[Tensor, Tensor]] | None:
        """The prompts' KV cache from ``layer`` on with each edit in its own replica (row
        ``replica * groups + group``), ``max_rows`` rows per forward."""
        mask = self.layout.prompt_mask
        if mask is None:
            return None
        rows = [(edit, g) for edit in edits for g in range(self.layout.n_groups)]
        pieces: list[list[tuple[Tensor, Tensor]]] = []
        for part in _chunks(rows, self.max_rows):
            index = torch.tensor([g for _, g in part], device=self.device)
            resid = self.prompt_resid[layer]  # on the layer's device, in a split model
            filled = build_cache([])
            final_residual(
                self.model,
                resid.index_select(0, index.to(resid.device)),
                mask.index_select(0, index),
                edit_hooks([edit for edit, _ in part], layer),
                past=filled,
                start_at_layer=layer,
            )
            pieces.append(cache_layers(filled)[layer:])
        return [
            (torch.cat([p[i][0] for p in pieces]), torch.cat([p[i][1] for p in pieces]))
            for i in range(len(pieces[0]))
        ]


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
            layers,
            store,
            site="w_o_in",
            select=lambda z: z[rows.to(z.device), last.to(z.device)],
            stop_after_last=True,
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
