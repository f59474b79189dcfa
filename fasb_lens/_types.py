"""Shared key and tensor types.

An attention head is named by one key everywhere in fasb_lens: ``Head(layer, head)``.
Dense per-head data is indexed ``[layer, head]``; sparse data is a list of heads plus a
``[k, ...]`` tensor in the same object. The jaxtyping aliases below name tensor
dimensions in TransformerLens vocabulary, so a signature says what each axis means.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Float, Int
from torch import Tensor


class Head(NamedTuple):
    """One attention head: ``layer`` and ``head`` are 0-based indices."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


HeadZ = Float[Tensor, "n layer head d_head"]
"""Per-head attention outputs before ``W_O`` (``hook_z``), one position per prompt."""

HeadGrid = Float[Tensor, "layer head"]
"""One number per head, e.g. a probe's validation accuracy."""

TokenIds = Int[Tensor, "batch pos"]
AttentionMask = Int[Tensor, "batch pos"]
Logits = Float[Tensor, "batch pos d_vocab"]
