"""A prefix many prompts share (an instruction and a few-shot primer), run once.

Every evaluation prompt begins with the same instruction and primer, a few hundred tokens
that are the same work for every question. :class:`SharedPrefix` runs them once; a batch
of prompts then starts from copies of its KV cache and runs only each prompt's own
tokens. :func:`prefill` runs tokens only to fill a KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.interventions import final_residual
from fasb_lens.models import build_cache, cache_layers, model_device


def prefill(
    model: TransformerBridge,
    ids: Tensor,
    mask: Tensor | None = None,
    past: Any = None,
) -> Any:
    """Run ``ids`` only to fill a KV cache (``past`` extended in place, or a new one);
    the unembedding, which nothing here needs, is never computed."""
    cache = past if past is not None else build_cache([])
    with torch.inference_mode():
        final_residual(model, ids, mask, past=cache)
    return cache


@dataclass
class SharedPrefix:
    """The tokens every prompt of a run begins with (an instruction and a few-shot primer),
    run once; prompts then start from a copy of its KV cache.

    The bridge derives each token's position from the attention mask, so a batch can hold
    the shared prefix, a masked gap and then each prompt's own tokens, and every row still
    sees exactly its own prompt.
    """

    ids: tuple[int, ...]
    layers: list[tuple[Tensor, Tensor]]

    @classmethod
    def build(
        cls, model: TransformerBridge, token_lists: Sequence[Sequence[int]], *, keep: int = 2
    ) -> SharedPrefix | None:
        """The longest prefix common to ``token_lists`` (leaving each list at least
        ``keep`` tokens of its own), or ``None`` when there is none."""
        if not token_lists:
            return None
        length = min(len(ids) for ids in token_lists) - keep
        first = token_lists[0]
        common = 0
        while common < length and all(ids[common] == first[common] for ids in token_lists):
            common += 1
        if common == 0:
            return None
        device = model_device(model)
        cache = prefill(model, torch.tensor([list(first[:common])], device=device))
        return cls(tuple(first[:common]), cache_layers(cache))

    def starts(self, ids: Sequence[int]) -> bool:
        """Whether ``ids`` begins with this prefix (and goes on after it)."""
        return len(ids) > len(self.ids) and tuple(ids[: len(self.ids)]) == self.ids

    def extend(self, mask: Tensor) -> tuple[Tensor, Any]:
        """What a forward over rows' own tokens needs to follow this prefix: ``mask`` (the
        rows' own attention mask) with the prefix's columns in front, and a new KV cache
        holding the prefix for each row."""
        rows = mask.shape[0]
        front = torch.ones(rows, len(self.ids), dtype=mask.dtype, device=mask.device)
        return torch.cat([front, mask], dim=1), self.cache(rows)

    def cache(self, rows: int) -> Any:
        """A new :class:`~fasb_lens.models.KVCache` holding the prefix for ``rows`` rows."""
        return build_cache(
            [
                (keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
                for keys, values in self.layers
            ]
        )
