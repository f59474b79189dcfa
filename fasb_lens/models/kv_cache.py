"""The KV cache of every cached forward, and the operations fasb_lens needs on it.

HuggingFace's ``DynamicCache`` appends a token by concatenation: at every decoding step
each layer's whole cache is copied to make room for one more position. :class:`KVCache`
is a ``DynamicCache`` whose layers live in buffers with spare room, so appending writes
only the new positions; a layer's keys and values are views of its buffers' front. A crop
(backtracking) shortens the views, and the next token is written where the dropped ones
were. The attention computes the same numbers from the same values.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_ROOM = 0.5
"""A layer's buffer, when it has to grow, gets this share of its new length (at least
:data:`MIN_ROOM` positions) as room for later tokens."""
MIN_ROOM = 32


class _RoomyLayer(DynamicLayer):
    """One layer's keys and values: views of the front of buffers with spare room."""

    _key_room: Tensor | None = None
    _value_room: Tensor | None = None

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not (
            _fits(self.keys, self._key_room, end) and _fits(self.values, self._value_room, end)
        ):
            self._key_room = _room(self.keys, length, key_states, end)
            self._value_room = _room(self.values, length, value_states, end)
        assert self._key_room is not None and self._value_room is not None
        self._key_room[:, :, length:end] = key_states
        self._value_room[:, :, length:end] = value_states
        self.keys = self._key_room[:, :, :end]
        self.values = self._value_room[:, :, :end]
        return self.keys, self.values


def _fits(held: Tensor, room: Tensor | None, end: int) -> bool:
    """Whether ``held`` is still the front of ``room`` (a crop keeps it so, a row
    selection does not) and ``end`` positions fit there."""
    return (
        room is not None
        and held.ndim == 4
        and held.data_ptr() == room.data_ptr()
        and held.shape[:2] == room.shape[:2]
        and held.stride() == room.stride()
        and room.shape[2] >= end
    )


def _room(held: Tensor, length: int, new: Tensor, end: int) -> Tensor:
    """A buffer for ``end`` positions and room to spare, holding ``held``'s first
    ``length``."""
    spare = max(int(end * SPARE_ROOM), MIN_ROOM)
    buffer = new.new_empty((*new.shape[:2], end + spare, new.shape[-1]))
    if length:
        buffer[:, :, :length] = held[:, :, :length]
    return buffer


class KVCache(DynamicCache):
    """A ``DynamicCache`` whose layers grow in place (see the module docstring), filled at
    construction with ``layers`` (per-layer ``(keys, values)``, as :func:`cache_layers`
    gives them; they are copied)."""

    def __init__(self, layers: Sequence[tuple[Tensor, Tensor]] = ()) -> None:
        super().__init__()
        self.layer_class_to_replicate = _RoomyLayer
        for keys, values in layers:
            self.layers.append(_RoomyLayer())
            self.layers[-1].update(keys, values)


def cache_layers(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """The ``(keys, values)`` of each layer of a cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def build_cache(layers: Sequence[tuple[Tensor, Tensor]]) -> KVCache:
    """A :class:`KVCache` holding (copies of) these per-layer ``(keys, values)``."""
    return KVCache(layers)


def crop_cache(cache: Any, n_tokens: int) -> None:
    """Drop the last ``n_tokens`` positions from a cache, in place.

    The negative form of ``crop`` is the one these transformers versions accept.
    """
    if n_tokens > 0:
        cache.crop(-n_tokens)


def copy_cache(cache: Any) -> Any:
    """An independent copy of a cache, to start several runs from one prefix."""
    if isinstance(cache, KVCache):
        return build_cache(cache_layers(cache))
    return copy.deepcopy(cache)


def select_rows(cache: Any, rows: Tensor) -> KVCache:
    """A new cache with only ``rows`` (a ``[n]`` index) of ``cache``'s batch.

    Each layer's cache lives where its layer runs (several GPUs for a split model), so the
    index goes to each layer's device (a no-op on one device)."""
    return build_cache(
        [
            (
                keys.index_select(0, rows.to(keys.device)),
                values.index_select(0, rows.to(values.device)),
            )
            for keys, values in cache_layers(cache)
        ]
    )


def cache_length(cache: Any) -> int:
    """Positions held by a cache."""
    return int(cache.get_seq_length())
