"""What an ablation does to a head: replace its output, or add to it.

Every per-head study applies, for each head, one or more :class:`Edit` objects at every
position: *zero* ablation replaces the head's ``hook_z`` by zeros, *mean* ablation by its
mean over reference prompts, *resample* ablation by its value on a few reference prompts
drawn at random (seeded, one run per draw, the results averaged), and *steer* adds the
head's steering vector times a strength. The head's value in a grid is the metric's mean
over its edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.activations import HeadActivations
from fasb_lens.interventions import Hooks, edit_rows
from fasb_lens.steering import Steering

AblationKind = Literal["zero", "mean", "resample", "steer"]
KINDS: tuple[AblationKind, ...] = ("zero", "mean", "resample", "steer")


@dataclass(frozen=True, eq=False)
class Edit:
    """Replace ``head``'s output by ``value`` (zeros when ``None``), or add ``value``."""

    head: Head
    value: Float[Tensor, " d_head"] | None = None
    add: bool = False


def edit_hooks(edits: Sequence[Edit], layer: int) -> Hooks:
    """Hooks applying ``edits[r]`` to batch row ``r`` (all edits of one layer and kind)."""
    if any(edit.head.layer != layer for edit in edits):
        raise ValueError(f"every edit of one batch must be in layer {layer}")
    adds = {edit.add for edit in edits}
    if len(adds) > 1:
        raise ValueError("one batch cannot mix replacing and adding")
    values = None
    if any(edit.value is not None for edit in edits):
        if any(edit.value is None for edit in edits):
            raise ValueError("one batch cannot mix zeroing with other values")
        values = torch.stack([edit.value for edit in edits])  # type: ignore[misc]
    return edit_rows(layer, [edit.head.head for edit in edits], values, add=adds.pop())


def make_edits(
    heads: Sequence[Head],
    kind: AblationKind,
    *,
    means: Float[Tensor, "layer head d_head"] | None = None,
    reference: HeadActivations | None = None,
    samples: int = 4,
    seed: int = 0,
    steering: Steering | None = None,
    strength: float = 5.0,
) -> dict[Head, list[Edit]]:
    """The edits of each head for an ablation of ``kind``.

    Args:
        means: ``[n_layers, n_heads, d_head]`` mean activations, for ``"mean"``.
        reference: activations of reference prompts, for ``"resample"``: each head gets
            ``samples`` of them, drawn with ``seed``.
        steering: vectors of every studied head, for ``"steer"`` at ``strength``.
    """
    if kind not in KINDS:
        raise ValueError(f"ablation kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "mean" and means is None:
        raise ValueError("mean ablation needs the heads' mean activations (means=...)")
    if kind == "resample" and reference is None:
        raise ValueError("resample ablation needs reference activations (reference=...)")
    if kind == "steer":
        if steering is None:
            raise ValueError("steering each head needs a steering holding the studied heads")
        missing = [str(head) for head in heads if head not in steering.heads]
        if missing:
            raise ValueError(f"the steering has no vector for {', '.join(missing[:5])}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    edits: dict[Head, list[Edit]] = {}
    for head in heads:
        if kind == "zero":
            edits[head] = [Edit(head)]
        elif kind == "mean":
            assert means is not None
            edits[head] = [Edit(head, means[head.layer, head.head].float())]
        elif kind == "resample":
            assert reference is not None
            rng = np.random.RandomState([seed, head.layer, head.head])
            draws = rng.randint(len(reference), size=samples).tolist()
            values = reference.head(head)
            edits[head] = [Edit(head, values[i].float()) for i in draws]
        else:
            assert steering is not None
            vector = steering.vectors[steering.heads.index(head)].float()
            edits[head] = [Edit(head, strength * vector, add=True)]
    return edits
