"""One forward for many token trees, each after its own cached prompt.

A :class:`~fasb_lens.trees.TokenTree` holds a prompt's candidate answers, every distinct
answer prefix once. :class:`TreeRows` packs several trees as the rows of one forward: row
``r`` is tree ``r``'s nodes (padded to the widest tree) after the cached prompt columns of
which ``prompt_columns[r]`` are its own. Each node attends to its own prompt's columns and
to its tree ancestors (an explicit ``[rows, 1, width, room + width]`` mask, which the
bridge takes as given) and sits at position ``starts[r] + depth`` (``position_ids``), so
neither the padding nor the other rows change a number beyond float rounding. Hooks act
per node (a steering strength per row and node), ``hook_z`` or the residual stream can be
kept, and the final residual stream is turned into each answer's summed log-probability
through :func:`fasb_lens.logprobs.target_log_probs`, each predicting node unembedded once.

Two users pack trees differently, because they know different things in advance:

* **Multiple-choice scoring** (:mod:`fasb_lens.scoring`) learns its forwards round by
  round (which answers trigger decides what is re-scored), one :class:`TreeRequest` per
  question and pass, each after its own prompt's KV cache (one row, its own length).
  :func:`drive` collects every question's requests of a round and :func:`forward_requests`
  packs them greedily, widest first: at most ``rows`` rows (few pay on a CPU),
  :data:`NODE_SLOTS` node slots, no tree padded past twice its width, one set of
  interventions per forward. The prompts' caches are stacked right-padded
  (:func:`stacked_cache`).
* **The exact ablation engine** (:mod:`fasb_lens.ablation.layout`) knows every tree up
  front and runs each bin once per edit of every head: it runs all prompts as one
  left-padded batch, bins the trees once by :func:`length_bins` (fewest padded positions
  plus a cost per forward), repeats a bin's rows once per edit (``replicas``) and picks
  each row's prompt from the batch's cache (:func:`selected_cache`).

Both build their forwards, masks, positions, caches and log-probabilities here. Two
things stay separate, on purpose. Where the prompts' caches come from: a scoring prompt
(instruction, primer, question) is cached once and serves every round and policy, while
an ablation edits the prompts too, so the grid re-runs them for every edit from the
edited layer on, one batch for all questions. And which trees share a forward: the
scorer's requests arrive a round at a time, carrying different hooks, and are packed as
they come; the grid's trees are fixed and each bin runs once per edit of every head, so
binning them once with the fewest padded positions pays off there (thousands of runs),
while a scoring round cannot wait for trees that later rounds will ask for.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.interventions import Hooks, Positions, capture, final_residual
from fasb_lens.logprobs import target_log_probs
from fasb_lens.models import build_cache, cache_layers, cache_length, model_device
from fasb_lens.trees import TokenTree

NODE_SLOTS = 4096
"""Rows times the widest tree, at most, in one forward of :func:`forward_requests` (a
sweep of many settings makes wide trees; fewer of them then share a forward)."""
BIN_COST = 24
"""Padded positions worth one more forward in :func:`length_bins`: trees are split into one
more bin of similar sizes when that saves more padded positions than this."""

KVLayers = list[tuple[Tensor, Tensor]]
"""A KV cache as ``(keys, values)`` per layer, each ``[rows, kv_heads, pos, d_head]``."""


class Steerer(Protocol):
    """What steers a forward (a policy's intervention): hooks adding ``strength`` where
    ``positions`` says."""

    def hooks(self, strength: Tensor, *, positions: Positions = "last") -> Hooks: ...


@dataclass(eq=False)
class TreeRows:
    """Token trees as the rows of one forward, each after its own prompt's cached columns.

    ``prompt_columns[r]`` marks the cached columns holding row ``r``'s prompt (``None``: no
    cached prompt); ``starts[r]`` is the position of row ``r``'s first node (its prompt's
    length). Answers are numbered over the rows, in order (``paths`` of each tree).
    """

    trees: Sequence[TokenTree]
    prompt_columns: Bool[Tensor, "rows room"] | None
    starts: Int[Tensor, " rows"]

    @classmethod
    def after_caches(
        cls, trees: Sequence[TokenTree], lengths: Sequence[int], device: torch.device
    ) -> TreeRows:
        """Rows after right-padded prompts of ``lengths`` cached positions."""
        room = max(lengths, default=0)
        starts = torch.tensor(list(lengths), dtype=torch.long, device=device)
        columns = torch.arange(room, device=device)[None] < starts[:, None] if room else None
        return cls(trees, columns, starts)

    @property
    def device(self) -> torch.device:
        return self.starts.device

    @cached_property
    def width(self) -> int:
        return max(len(tree) for tree in self.trees)

    @cached_property
    def real(self) -> Bool[Tensor, "rows width"]:
        """Which slots hold a node (the others are padding)."""
        lengths = torch.tensor([len(tree) for tree in self.trees], device=self.device)
        return torch.arange(self.width, device=self.device)[None] < lengths[:, None]

    @cached_property
    def tokens(self) -> Int[Tensor, "rows width"]:
        """Each node's token (0 for padding)."""
        return self.pad([torch.tensor(tree.tokens) for tree in self.trees])

    def pad(self, values: Sequence[Tensor]) -> Tensor:
        """Per-tree values (``[nodes, ...]`` each) as one ``[rows, width, ...]`` tensor,
        zeros in the padding."""
        out = values[0].new_zeros((len(values), self.width, *values[0].shape[1:]))
        for row, value in enumerate(values):
            out[row, : len(value)] = value
        return out.to(self.device)

    @cached_property
    def mask(self) -> Bool[Tensor, "rows 1 width room_width"]:
        """Each node sees its own prompt's columns and its ancestors, a padding slot only
        itself (:meth:`~fasb_lens.trees.TokenTree.attention`, row by row)."""
        columns = self.prompt_columns
        return torch.cat(
            [
                tree.attention(0 if columns is None else columns[row], width=self.width)
                for row, tree in enumerate(self.trees)
            ]
        ).to(self.device)

    @cached_property
    def positions(self) -> Int[Tensor, "rows width"]:
        """Each node's position in its own sequence: its prompt's length plus its depth."""
        depth = self.pad([torch.tensor(tree.depth) for tree in self.trees])
        return self.starts[:, None] + depth

    def run(
        self,
        model: TransformerBridge,
        inputs: Tensor,
        *hook_lists: Hooks,
        past: Any = None,
        start_at_layer: int | None = None,
        replicas: int = 1,
    ) -> Float[Tensor, "replicas_rows width d_model"]:
        """The final residual stream of the rows (``replicas`` copies of them, replica
        after replica): ``inputs`` are their tokens, or the residual stream entering
        ``start_at_layer``; ``past`` holds each row's prompt."""
        return final_residual(
            model,
            inputs,
            self.mask.repeat(replicas, 1, 1, 1),
            *hook_lists,
            past=past,
            start_at_layer=start_at_layer,
            position_ids=self.positions.repeat(replicas, 1),
        )

    @cached_property
    def answer_counts(self) -> list[int]:
        """Answers per row."""
        return [len(tree.paths) for tree in self.trees]

    @cached_property
    def _reads(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every answer token's read, over one replica: the predicting slots (flat over
        ``rows * width``, each once, in order), for each read the index of its slot among
        them, the token and the answer."""
        reads, answers = [], 0
        for row, tree in enumerate(self.trees):
            base = row * self.width
            reads += [(base + node, token, answers + a) for node, token, a in tree.reads]
            answers += len(tree.paths)
        if not reads:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty, empty, empty
        slot, token, answer = torch.tensor(reads, device=self.device).T
        used, at = slot.unique(return_inverse=True)
        return used, at, token, answer

    def log_probs(
        self, model: TransformerBridge, final: Tensor, replicas: int = 1
    ) -> Float[Tensor, "replicas answers"]:
        """Each answer's summed log-probability (float64; differentiable) from
        :meth:`run`'s final residual stream, per replica."""
        used, at, token, answer = self._reads
        n_answers = sum(self.answer_counts)
        copies = torch.arange(replicas, device=final.device)[:, None]
        picked = target_log_probs(
            model,
            final.reshape(-1, final.shape[-1])[(used + copies * self.real.numel()).flatten()],
            token.repeat(replicas),
            at=(at + copies * len(used)).flatten(),
        )
        totals = torch.zeros(replicas * n_answers, dtype=torch.float64, device=final.device)
        slots = (answer + copies * n_answers).flatten()
        return totals.index_add_(0, slots, picked.double()).view(replicas, n_answers)


# --------------------------------------------------------------------------- prompt caches


def stacked_cache(prompts: Sequence[Any]) -> Any:
    """One KV cache whose row ``r`` holds ``prompts[r]`` (a one-row cache, or ``None``),
    zeros after it up to the longest (``None`` when no row has a cached prompt)."""
    held = [cache_layers(cache) if cache is not None else None for cache in prompts]
    longest = max((cache_length(cache) for cache in prompts if cache is not None), default=0)
    if longest == 0:
        return None
    if len(held) == 1:
        return build_cache(held[0])
    template = next(layers for layers in held if layers is not None)
    stacked = []
    for layer, (keys, values) in enumerate(template):
        shape = (len(held), keys.shape[1], longest, keys.shape[3])
        both = [keys.new_zeros(shape), values.new_zeros(shape)]
        for row, layers in enumerate(held):
            if layers is not None:
                for buffer, part in zip(both, layers[layer], strict=True):
                    buffer[row, :, : part.shape[2]] = part[0]
        stacked.append((both[0], both[1]))
    return build_cache(stacked)


def selected_cache(layers: KVLayers, rows: Int[Tensor, " n"]) -> KVLayers:
    """The layers of a batch's KV cache at ``rows`` (an index into its batch; repeat an
    index to repeat a row), each layer's taken on its own device (a split model's layers
    live on several)."""
    return [
        (keys.index_select(0, rows.to(keys.device)), values.index_select(0, rows.to(values.device)))
        for keys, values in layers
    ]


# --------------------------------------------------------------------------- packing


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
class TreeRequest:
    """One tree's share of a forward: ``tree`` fed after ``prompt`` (a one-row KV cache;
    ``None``: nothing cached) from block ``start`` (``inputs``: the nodes' token ids
    ``[nodes]``, or the residual stream entering that block ``[nodes, d_model]``), with
    each steerer's strength at every node (``steer``). ``capture`` names the layers whose
    ``hook_z`` is kept; ``keep_resid`` also keeps the residual stream entering the lowest
    of them."""

    tree: TokenTree
    inputs: Tensor
    prompt: Any = None
    start: int | None = None
    steer: list[tuple[Steerer, Tensor]] = field(default_factory=list)
    capture: tuple[int, ...] = ()
    keep_resid: bool = False


@dataclass
class TreeOutput:
    """What a forward gives one request: each answer's summed log-probability
    (``[answers]``, float64), the captured ``hook_z`` (``layer -> [1, nodes, n_heads,
    d_head]``) and the kept residual stream (``[nodes, d_model]``, or ``None``)."""

    totals: Float[Tensor, " answers"]
    z: dict[int, Tensor]
    resid: Float[Tensor, "nodes d_model"] | None


def forward_requests(
    model: TransformerBridge, requests: Sequence[TreeRequest], rows: int
) -> list[TreeOutput]:
    """Every request's output (in order), requests that start at the same block and keep
    the same layers packed into shared forwards (see :func:`pack_requests`)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault((request.start, request.capture), []).append(index)
    outputs: dict[int, TreeOutput] = {}
    for members in groups.values():
        members.sort(key=lambda index: -len(requests[index].tree))
        for chunk in pack_requests([requests[index] for index in members], rows):
            done = forward_together(model, [requests[members[i]] for i in chunk])
            outputs.update((members[i], out) for i, out in zip(chunk, done, strict=True))
    return [outputs[index] for index in range(len(requests))]


def pack_requests(requests: Sequence[TreeRequest], rows: int) -> list[list[int]]:
    """``requests`` (widest tree first) cut into forwards that pay off: at most ``rows``
    rows and :data:`NODE_SLOTS` node slots, no tree padded to more than twice its width,
    and only requests steered by the same steerers together (each steerer's hooks act on
    the whole batch, so a question's own random directions would make every row of its
    forward pay for them)."""
    chunks: list[list[int]] = []
    for index, request in enumerate(requests):
        for chunk in chunks:
            first = requests[chunk[0]]
            width = len(first.tree)
            if (
                len(chunk) < rows
                and (len(chunk) + 1) * width <= NODE_SLOTS
                and 2 * len(request.tree) >= width
                and _steerers(first) == _steerers(request)
            ):
                chunk.append(index)
                break
        else:
            chunks.append([index])
    return chunks


def _steerers(request: TreeRequest) -> set[int]:
    return {id(steerer) for steerer, _ in request.steer}


def distinct_index(seen: list[Any], item: Any) -> int:
    """``item``'s index in ``seen``, compared by identity (a steerer is the object a policy
    hands out), appended first if it is not there."""
    for index, other in enumerate(seen):
        if other is item:
            return index
    seen.append(item)
    return len(seen) - 1


def forward_together(model: TransformerBridge, requests: Sequence[TreeRequest]) -> list[TreeOutput]:
    """One forward whose rows are ``requests`` (same start block, same kept layers), each
    row's tree after its own prompt: no row sees another's prompt or padding."""
    device = model_device(model)
    packed = TreeRows.after_caches(
        [request.tree for request in requests],
        [cache_length(r.prompt) if r.prompt is not None else 0 for r in requests],
        device,
    )
    steerers: list[Steerer] = []
    amounts: list[list[Tensor]] = []
    for row, request in enumerate(requests):
        for steerer, values in request.steer:
            group = distinct_index(steerers, steerer)
            if group == len(amounts):
                amounts.append([torch.zeros(len(r.tree), device=device) for r in requests])
            amounts[group][row] = values
    hooks = []
    for steerer, values in zip(steerers, amounts, strict=True):
        strength = packed.pad(values)
        hooks += steerer.hooks(strength, positions=strength != 0)
    z: dict[int, Tensor] = {}
    kept: dict[int, Tensor] = {}
    layers = list(requests[0].capture)
    hooks += capture(layers, z)
    if layers and any(request.keep_resid for request in requests):
        hooks += capture(layers[:1], kept, site="resid_pre")
    with torch.inference_mode():
        final = packed.run(
            model,
            packed.pad([request.inputs for request in requests]),
            hooks,
            past=stacked_cache([request.prompt for request in requests]),
            start_at_layer=requests[0].start,
        )
        totals = packed.log_probs(model, final)[0].split(packed.answer_counts)
    resid = next(iter(kept.values())) if kept else None
    return [
        TreeOutput(
            totals[row],
            {layer: held[row : row + 1, : len(request.tree)] for layer, held in z.items()},
            None if resid is None else resid[row, : len(request.tree)],
        )
        for row, request in enumerate(requests)
    ]


# --------------------------------------------------------------------------- many callers

T = TypeVar("T")

Steps = Generator[list[TreeRequest], list[TreeOutput], T]
"""A caller's work as a generator: it yields the forwards it needs next (all at once, so
they can join other callers' forwards) and is sent their outputs, in order."""


def drive(model: TransformerBridge, steps: Sequence[Steps[Any]], rows: int) -> list[Any]:
    """Advance every generator of steps to its end, each round's requests of all of them
    run together (:func:`forward_requests`); their return values, in order."""
    results: list[Any] = [None] * len(steps)
    waiting: dict[int, list[TreeRequest]] = {}

    def advance(index: int, outputs: list[TreeOutput] | None) -> None:
        try:
            waiting[index] = steps[index].send(outputs)  # type: ignore[arg-type]
        except StopIteration as stop:
            waiting.pop(index, None)
            results[index] = stop.value

    for index in range(len(steps)):
        advance(index, None)
    while waiting:
        owners = [(index, len(requests)) for index, requests in waiting.items()]
        flat = [request for requests in waiting.values() for request in requests]
        outputs = forward_requests(model, flat, rows)
        begin = 0
        for index, count in owners:
            advance(index, outputs[begin : begin + count])
            begin += count
    return results


def alone(model: TransformerBridge, steps: Steps[T]) -> T:
    """Run one caller's steps, each forward on its own."""
    return drive(model, [steps], 1)[0]
