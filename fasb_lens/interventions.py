"""Every hook fasb_lens puts on a model: steer, ablate, capture.

A hook is a function on one named activation of the forward pass. fasb_lens touches two
kinds of site, both addressed by layer and never by parsing hook names:

* a head's output before ``W_O`` (``hook_z``, ``[batch, pos, n_heads, d_head]``), keyed by
  :class:`~fasb_lens.Head`: steered by adding a vector, ablated by replacing it, captured
  for the tracker and for probing;
* the residual stream after a block (``hook_resid_post``, ``[batch, pos, d_model]``),
  keyed by layer: steered by CAA's vector, captured for CAA.

Functions here build ``(hook name, function)`` lists; they are applied only inside a
context manager (:func:`hooked`, or ``model.hooks(fwd_hooks=...)``), so no hook survives
an exception. Everything a hook does not target keeps its exact bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head
from fasb_lens.models import (
    HOOK_FINAL,
    HOOK_RESID_POST,
    HOOK_RESID_PRE,
    HOOK_W_O_IN,
    HOOK_Z,
    forward,
)

Hooks = list[tuple[str, Callable[..., Tensor]]]
Site = Literal["z", "w_o_in", "resid_pre", "resid_post", "final"]
"""Where to read: ``"z"`` the heads' outputs as computed (``hook_z``), ``"w_o_in"`` the
same after any edit made at ``hook_z`` (as ``W_O`` receives them), ``"resid_pre"`` /
``"resid_post"`` the residual stream entering / leaving a block, ``"final"`` the final
normalised residual stream the unembedding reads (one, whatever the layer)."""
_SITES = {
    "z": HOOK_Z,
    "w_o_in": HOOK_W_O_IN,
    "resid_pre": HOOK_RESID_PRE,
    "resid_post": HOOK_RESID_POST,
    "final": HOOK_FINAL,
}

Positions = Literal["last", "all"] | int | Tensor
"""Where to act in one forward pass: the ``"last"`` position, ``"all"`` positions, an int
``p`` (every absolute position ``>= p``), a ``[batch]`` tensor of per-row start positions,
or a ``[batch, pos]`` boolean mask over the forward's input."""
Strength = float | Float[Tensor, " batch"] | Float[Tensor, "batch pos"]
"""How much to add: one number, one per batch row, or one per row and input position."""


def hook_name(site: Site, layer: int = 0) -> str:
    """The hook point of ``site`` in ``layer``."""
    if site not in _SITES:
        raise ValueError(f"site must be one of {', '.join(_SITES)}, got {site!r}")
    return _SITES[site].format(layer=layer)


@contextmanager
def hooked(model: TransformerBridge, *hook_lists: Hooks) -> Iterator[TransformerBridge]:
    """Run every forward pass of ``model`` inside the block with all ``hook_lists`` on."""
    hooks = [hook for hooks in hook_lists for hook in hooks]
    with model.hooks(fwd_hooks=hooks):
        yield model


def by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    """The indices into ``heads`` of each layer's heads, layers in increasing order."""
    grouped: dict[int, list[int]] = {}
    for index, head in enumerate(heads):
        grouped.setdefault(head.layer, []).append(index)
    return dict(sorted(grouped.items()))


# --------------------------------------------------------------------------- positions


def position_mask(
    positions: Positions, batch: int, n_pos: int, *, offset: int = 0, device: Any = None
) -> Bool[Tensor, "batch pos"]:
    """Which of a forward's ``n_pos`` input positions to act on, per row.

    ``offset`` is the absolute position of the forward's first input (the KV cache's
    length during cached decoding); int and per-row starts are absolute positions.
    """
    absolute = torch.arange(offset, offset + n_pos, device=device)
    if isinstance(positions, str):
        if positions == "last":
            return (absolute == offset + n_pos - 1).expand(batch, n_pos)
        if positions == "all":
            return torch.ones(batch, n_pos, dtype=torch.bool, device=device)
        raise ValueError(f"positions must be 'last', 'all', an int or a tensor, got {positions!r}")
    if isinstance(positions, int):
        return (absolute >= positions).expand(batch, n_pos)
    positions = torch.as_tensor(positions, device=device)
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch, n_pos):
            raise ValueError(
                f"a position mask must be [{batch}, {n_pos}], got {tuple(positions.shape)}"
            )
        return positions
    if tuple(positions.shape) != (batch,):
        raise ValueError(f"per-row start positions must be [{batch}], got {tuple(positions.shape)}")
    return absolute[None, :] >= positions[:, None]


def add_at_positions(
    x: Tensor,
    amount: Tensor,
    strength: Strength,
    positions: Positions,
    *,
    offset: int = 0,
    heads: list[int] | None = None,
) -> Tensor:
    """``x`` with ``strength * amount`` added at the chosen positions; the rest untouched.
    ``strength`` is one number, one per row or one per row and position (``[batch, pos]``).

    ``x`` is ``[batch, pos, ...]``: with ``heads``, ``[batch, pos, n_heads, d_head]`` and
    ``amount`` ``[len(heads), d_head]``; without, ``amount`` matches ``x[0, 0]``. A leading
    ``[batch]`` dimension on ``amount`` gives each row its own amount. Entries outside the
    positions (or with strength 0) keep their exact bits.
    """
    batch, n_pos = x.shape[:2]
    mask = position_mask(positions, batch, n_pos, offset=offset, device=x.device)
    scale = torch.as_tensor(strength, dtype=x.dtype, device=x.device)
    scale = scale.expand(batch)[:, None] if scale.ndim < 2 else scale
    amount = amount.to(device=x.device, dtype=x.dtype)
    target = x[:, :, heads] if heads is not None else x
    trailing = target.ndim - 2
    if amount.ndim == trailing + 1:  # one amount per row: broadcast over positions
        amount = amount[:, None]
    moved = target + scale.reshape(*scale.shape, *(1,) * trailing) * amount
    keep = mask.reshape(batch, n_pos, *(1,) * trailing)
    if heads is None:
        return torch.where(keep, moved, x)
    out = x.clone()
    out[:, :, heads] = torch.where(keep, moved, target)
    return out


# --------------------------------------------------------------------------- steer


def steer_heads(
    heads: Sequence[Head],
    vectors: Float[Tensor, "k d_head"] | Float[Tensor, "batch k d_head"],
    strength: Strength,
    *,
    positions: Positions = "last",
    offset: int = 0,
) -> Hooks:
    """Hooks adding ``strength * vectors[k]`` to head ``heads[k]``'s ``hook_z``.

    ``strength`` is a number, one per batch row (``[batch]``) or one per row and position
    (``[batch, pos]``); 0 leaves an entry alone. ``vectors`` with a leading ``[batch]``
    dimension gives each row its own vectors (a batch of random controls, one draw each).
    """
    if len(heads) != vectors.shape[-2]:
        raise ValueError(f"{len(heads)} heads but {vectors.shape[-2]} vectors")

    def layer_hook(indices: list[int]) -> Callable[..., Tensor]:
        columns = [heads[i].head for i in indices]
        amount = vectors[..., indices, :]

        def hook(z: Tensor, hook: Any) -> Tensor:
            return add_at_positions(z, amount, strength, positions, offset=offset, heads=columns)

        return hook

    return [
        (hook_name("z", layer), layer_hook(indices)) for layer, indices in by_layer(heads).items()
    ]


def steer_residual(
    layer: int,
    vector: Float[Tensor, " d_model"] | Float[Tensor, "batch d_model"],
    strength: Strength,
    *,
    positions: Positions = "last",
    offset: int = 0,
) -> Hooks:
    """A hook adding ``strength * vector`` to the residual stream after block ``layer``
    (``[batch, d_model]``: a vector per row)."""

    def hook(resid: Tensor, hook: Any) -> Tensor:
        return add_at_positions(resid, vector, strength, positions, offset=offset)

    return [(hook_name("resid_post", layer), hook)]


@dataclass(frozen=True)
class RowHooks:
    """An intervention whose batch rows add different vectors at the same sites: what a
    batch mixing several interventions of one kind runs (``make`` builds its hooks from a
    strength, the positions and the offset, as an intervention's ``hooks`` does)."""

    first_layer: int
    make: Callable[[Strength, Positions, int], Hooks]

    def hooks(self, strength: Strength, *, positions: Positions = "last", offset: int = 0) -> Hooks:
        return self.make(strength, positions, offset)

    def check_model(self, model: TransformerBridge) -> None:
        """Nothing to check: each row's own intervention was checked."""


# --------------------------------------------------------------------------- ablate


def replace_heads(heads: Sequence[Head], values: Mapping[Head, Tensor] | None = None) -> Hooks:
    """Hooks replacing each head's ``hook_z`` at every position.

    ``values`` maps a head to what replaces it (a ``[d_head]`` vector, or any tensor that
    broadcasts to ``[batch, pos, d_head]``); without ``values`` heads are zeroed.
    """
    layers: dict[int, list[Head]] = {}
    for head in heads:
        layers.setdefault(head.layer, []).append(head)

    def layer_hook(chosen: list[Head]) -> Callable[..., Tensor]:
        def hook(z: Tensor, hook: Any) -> Tensor:
            z = z.clone()
            for head in chosen:
                if values is None:
                    z[:, :, head.head] = 0.0
                else:
                    z[:, :, head.head] = values[head].to(device=z.device, dtype=z.dtype)
            return z

        return hook

    return [(hook_name("z", layer), layer_hook(chosen)) for layer, chosen in sorted(layers.items())]


def edit_rows(
    layer: int,
    heads: Sequence[int | None],
    values: Tensor | None = None,
    *,
    add: bool = False,
) -> Hooks:
    """A hook editing one head per batch row in ``layer``, at every position.

    Row ``r`` edits head ``heads[r]`` (``None``: the row is left alone): its ``hook_z`` is
    replaced by ``values[r]`` (a ``[d_head]`` vector; zeros without ``values``), or with
    ``add`` has ``values[r]`` added. Many single-head ablations thus run as one batch. A
    single edit applies to every row of any batch.
    """
    if add and values is None:
        raise ValueError("adding needs values")
    if values is not None and len(values) != len(heads):
        raise ValueError(f"{len(values)} values for {len(heads)} rows")

    def hook(z: Tensor, hook: Any) -> Tensor:
        batch = z.shape[0]
        if len(heads) not in (1, batch):
            raise ValueError(f"{len(heads)} rows of edits for a batch of {batch}")
        rows_heads = list(heads) * batch if len(heads) == 1 else list(heads)
        z = z.clone()
        groups: dict[int, list[int]] = {}
        for row, head in enumerate(rows_heads):
            if head is not None:
                groups.setdefault(int(head), []).append(row)
        for head, rows in groups.items():
            index = torch.tensor(rows, device=z.device)
            if values is None:
                z[index, :, head] = 0.0
                continue
            source = index if len(heads) > 1 else torch.zeros_like(index)
            amount = values[source].to(device=z.device, dtype=z.dtype)[:, None, :]
            if add:
                z[index, :, head] = z[index, :, head] + amount
            else:
                z[index, :, head] = amount.expand(-1, z.shape[1], -1)
        return z

    return [(hook_name("z", layer), hook)]


# --------------------------------------------------------------------------- capture


class StopForward(Exception):
    """Raised by a capture hook after the last activation a caller needs."""


def capture(
    layers: Sequence[int],
    store: dict[int, Tensor],
    *,
    site: Site = "z",
    select: Callable[[Tensor], Tensor] | None = None,
    stop_after_last: bool = False,
) -> Hooks:
    """Hooks keeping ``store[layer] = select(activation)`` (the whole activation by default).

    The activation is read as it arrives, before any later hook on the same point
    changes it (read ``"w_o_in"`` to see the heads after an edit). With
    ``stop_after_last`` the hook of the last layer raises :class:`StopForward`, so
    nothing after it is computed (the caller catches it). Site ``"final"`` has one
    point: pass ``layers=[0]``.
    """
    ordered = sorted(set(layers))

    def layer_hook(layer: int) -> Callable[..., Tensor]:
        stop = stop_after_last and layer == ordered[-1]

        def hook(activation: Tensor, hook: Any) -> Tensor:
            store[layer] = activation if select is None else select(activation)
            if stop:
                raise StopForward
            return activation

        return hook

    return [(hook_name(site, layer), layer_hook(layer)) for layer in ordered]


def final_residual(
    model: TransformerBridge,
    inputs: Tensor,
    mask: Tensor | None = None,
    *hook_lists: Hooks,
    past: Any = None,
    start_at_layer: int | None = None,
    position_ids: Tensor | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The final normalised residual stream of a forward whose unembedding is never run
    (:func:`fasb_lens.models.unembed` then maps only the positions a caller scores); a
    ``past`` KV cache is extended in place; ``hook_lists`` apply during the forward."""
    store: dict[int, Tensor] = {}
    stop = capture([0], store, site="final", stop_after_last=True)
    with hooked(model, *hook_lists, stop):
        try:
            forward(
                model,
                inputs,
                mask,
                past_key_values=past,
                start_at_layer=start_at_layer,
                position_ids=position_ids,
            )
        except StopForward:
            pass
    return store[0]


def heads_from(
    store: Mapping[int, Tensor], heads: Sequence[Head], *, device: Any = None
) -> Float[Tensor, "... k d_head"]:
    """Stack the captured ``hook_z`` of ``heads`` (``store`` from :func:`capture`) on
    ``device`` (default: the first head's).

    A model split over several GPUs computes each layer on its own, so the heads of
    different layers arrive on different devices; on one device nothing is copied.
    """
    if not heads:
        raise ValueError("no heads to stack")
    target = store[heads[0].layer].device if device is None else torch.device(device)
    return torch.stack([store[head.layer][..., head.head, :].to(target) for head in heads], dim=-2)
