"""One truthfulness probe per attention head, and the state tracker built from them.

A probe is an L2-regularised logistic regression that reads one head's ``hook_z`` at a
prompt's last token and predicts whether the answer in the prompt is true. Its accuracy
on held-out questions says how much truthfulness that head carries; the heads with the
best validation accuracy are FASB's *anchored heads*.

:func:`fit_head_probes` fits every head at once with scikit-learn's
``LogisticRegression()`` objective (:mod:`fasb_lens.probe_solvers`: all heads together in
torch, or ``engine="sklearn"``, the per-head scikit-learn loop, as the reference).

The anchored heads' probes become the state tracker (:mod:`fasb_lens.trackers`):
``p_true = mean over anchored heads of sigmoid(w . z + b)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from fasb_lens import storage
from fasb_lens._types import Head, HeadGrid
from fasb_lens.activations import HeadActivations
from fasb_lens.models import ModelShape, check_shape
from fasb_lens.probe_solvers import fit_sklearn, fit_torch
from fasb_lens.splits import Split
from fasb_lens.trackers import ProbeTracker

Engine = Literal["torch", "sklearn"]


# --------------------------------------------------------------------------- probes


_PROBE_TENSORS = ("weight", "bias", "train_accuracy", "val_accuracy", "train_idx", "val_idx")


@dataclass
class HeadProbes:
    """A logistic-regression probe for every head, with its accuracy grids.

    ``weight[l, h]``/``bias[l, h]`` is the probe of head ``(l, h)``; the accuracy grids are
    ``[n_layers, n_heads]`` and hold NaN for layers that were not collected. ``train_idx``
    and ``val_idx`` are the rows of the activations the probes were fitted and validated on.
    """

    weight: Float[Tensor, "layer head d_head"]
    bias: HeadGrid
    train_accuracy: HeadGrid
    val_accuracy: HeadGrid
    train_idx: Int[Tensor, " n_train"]
    val_idx: Int[Tensor, " n_val"]
    engine: str = "torch"
    C: float = 1.0
    val_majority: float = float("nan")
    """Accuracy of always predicting the validation set's most common label."""

    @property
    def shape(self) -> ModelShape:
        n_layers, n_heads, d_head = self.weight.shape
        return ModelShape(n_layers, n_heads, d_head)

    def ranked_heads(self) -> list[Head]:
        """Every fitted head, best validation accuracy first (ties: lower layer, head)."""
        accuracy = self.val_accuracy.flatten()
        fitted = torch.nonzero(~accuracy.isnan()).flatten().tolist()
        n_heads = self.shape.n_heads
        order = sorted(fitted, key=lambda index: (-float(accuracy[index]), index))
        return [Head(*divmod(index, n_heads)) for index in order]

    def top_heads(self, k: int) -> list[Head]:
        """The ``k`` heads with the best validation accuracy: FASB's anchored heads."""
        ranked = self.ranked_heads()
        if not 1 <= k <= len(ranked):
            raise ValueError(f"top_k must be between 1 and {len(ranked)} (fitted heads), got {k}")
        return ranked[:k]

    def random_heads(self, k: int, *, seed: int = 0) -> list[Head]:
        """``k`` fitted heads drawn at random (seeded): the control for anchoring."""
        fitted = sorted(self.ranked_heads())
        if not 1 <= k <= len(fitted):
            raise ValueError(f"k must be between 1 and {len(fitted)} (fitted heads), got {k}")
        picked = np.random.RandomState(seed).choice(len(fitted), size=k, replace=False)
        return [fitted[index] for index in picked]

    def params(
        self, heads: Sequence[Head]
    ) -> tuple[Float[Tensor, "k d_head"], Float[Tensor, " k"]]:
        """The probes of ``heads`` stacked in that order."""
        for head in heads:
            self.shape.check_head(head)
        layers = torch.tensor([head.layer for head in heads])
        indices = torch.tensor([head.head for head in heads])
        return self.weight[layers, indices], self.bias[layers, indices]

    def tracker(self, heads: Sequence[Head]) -> ProbeTracker:
        weight, bias = self.params(heads)
        return ProbeTracker(tuple(heads), weight.clone(), bias.clone())

    def summary(self, k: int = 10) -> dict[str, Any]:
        """The best ``k`` heads and their accuracies, JSON-ready."""
        return {
            "engine": self.engine,
            "n_train": len(self.train_idx),
            "n_val": len(self.val_idx),
            "val_majority_baseline": round(self.val_majority, 4),
            "best_heads": [
                {
                    "layer": head.layer,
                    "head": head.head,
                    "val_accuracy": round(float(self.val_accuracy[head]), 4),
                    "train_accuracy": round(float(self.train_accuracy[head]), 4),
                }
                for head in self.top_heads(min(k, len(self.ranked_heads())))
            ],
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``probes.safetensors`` and ``probes.json`` into ``folder``."""
        tensors = {
            "weight": self.weight,
            "bias": self.bias,
            "train_accuracy": self.train_accuracy,
            "val_accuracy": self.val_accuracy,
            "train_idx": self.train_idx,
            "val_idx": self.val_idx,
        }
        meta = {
            **self.shape.to_dict(),
            "engine": self.engine,
            "C": self.C,
            "val_majority": self.val_majority,
        }
        return storage.save_artifact(folder, storage.PROBES, tensors, meta)

    @classmethod
    def load(cls, folder: str | Path, *, shape: ModelShape | None = None) -> HeadProbes:
        tensors, meta = storage.load_artifact(
            folder,
            storage.PROBES,
            tensors=_PROBE_TENSORS,
            meta=("n_layers", "n_heads", "d_head", "engine", "C", "val_majority"),
        )
        probes = cls(
            weight=tensors["weight"],
            bias=tensors["bias"],
            train_accuracy=tensors["train_accuracy"],
            val_accuracy=tensors["val_accuracy"],
            train_idx=tensors["train_idx"],
            val_idx=tensors["val_idx"],
            engine=meta["engine"],
            C=meta["C"],
            val_majority=meta["val_majority"],
        )
        if shape is not None:
            check_shape(probes.shape, shape, what=f"the probes in {folder}")
        return probes


# --------------------------------------------------------------------------- fitting


def _as_inputs(
    activations: HeadActivations | Tensor, labels: Tensor | Sequence[int] | None
) -> tuple[Tensor, Tensor, tuple[int, ...] | None]:
    if isinstance(activations, HeadActivations):
        z, layers = activations.z, activations.layers
        labels = activations.labels if labels is None else labels
    else:
        z, layers = activations, None
    if labels is None:
        raise ValueError("labels are needed: pass them or use labelled activations")
    labels = torch.as_tensor(labels)
    if z.ndim != 4:
        raise ValueError(
            f"activations must be [n, layer, head, d_head], got shape {tuple(z.shape)}"
        )
    if len(labels) != len(z):
        raise ValueError(f"{len(labels)} labels for {len(z)} activation rows; they must match")
    if not torch.isin(labels, torch.tensor([0, 1])).all():
        raise ValueError("labels must be 0 (false) or 1 (true)")
    return z, labels.long(), layers


def _as_rows(index: Sequence[int] | np.ndarray | Tensor, n: int, name: str) -> Tensor:
    rows = torch.as_tensor(np.asarray(index), dtype=torch.long).flatten()
    if len(rows) == 0:
        raise ValueError(f"{name} is empty")
    if rows.min() < 0 or rows.max() >= n:
        raise ValueError(f"{name} holds rows outside 0..{n - 1}")
    return rows


def _check_finite(z: Tensor, rows: Tensor, layers: Sequence[int]) -> None:
    finite = torch.isfinite(z[rows]).all(dim=-1).all(dim=0)  # [layer, head]
    if not finite.all():
        bad = torch.nonzero(~finite)
        first = Head(layers[int(bad[0, 0])], int(bad[0, 1]))
        raise ValueError(
            f"activations hold NaN or infinite values in {len(bad)} heads (first: {first}); "
            "re-collect them, e.g. in float32 rather than float16"
        )


def _split_rows(activations: Any, split: Split | None, train_idx: Any, val_idx: Any) -> tuple:
    """The rows to fit and validate on: given, or a split's questions' prompts."""
    if split is not None:
        if train_idx is not None or val_idx is not None:
            raise ValueError("give either split or train_idx and val_idx, not both")
        if not isinstance(activations, HeadActivations) or activations.groups is None:
            raise ValueError("a split needs activations of labelled prompts (with groups)")
        return split.rows(activations.groups, "train"), split.rows(activations.groups, "val")
    if train_idx is None or val_idx is None:
        raise ValueError("give the rows to fit and validate on (train_idx, val_idx) or a split")
    return train_idx, val_idx


def _check_rows(
    z: Tensor, labels: Tensor, layers: Sequence[int], train_idx: Any, val_idx: Any
) -> tuple[Tensor, Tensor]:
    """The training and validation rows, refused when they overlap, when training holds
    one class only, or when their activations are not finite."""
    train = _as_rows(train_idx, len(z), "train_idx")
    val = _as_rows(val_idx, len(z), "val_idx")
    if set(train.tolist()) & set(val.tolist()):
        raise ValueError("train_idx and val_idx share rows; a probe must be validated on new rows")
    train_labels = labels[train]
    if train_labels.min() == train_labels.max():
        raise ValueError(
            f"the training rows hold only label {int(train_labels[0])} ({len(train)} rows); "
            "a probe needs both true and false examples"
        )
    _check_finite(z, torch.cat([train, val]), layers)
    return train, val


def _solve(
    x: Tensor,
    y: Tensor,
    engine: Engine,
    *,
    C: float,
    max_iter: int | None,
    tol: float,
    chunk: int | None,
    device: str | torch.device | None,
    progress: bool,
) -> tuple[Tensor, Tensor]:
    """Every head's probe weights and bias from one engine (its default iterations)."""
    if engine == "torch":
        return fit_torch(
            x,
            y,
            C=C,
            max_iter=max_iter or 50,
            tol=tol,
            chunk=chunk,
            device=device,
            progress=progress,
        )
    if engine == "sklearn":
        return fit_sklearn(x, y, C=C, max_iter=max_iter or 1000, progress=progress)
    raise ValueError(f"engine must be 'torch' or 'sklearn', got {engine!r}")


def fit_head_probes(
    activations: HeadActivations | Float[Tensor, "n layer head d_head"],
    labels: Tensor | Sequence[int] | None = None,
    *,
    train_idx: Sequence[int] | np.ndarray | Tensor | None = None,
    val_idx: Sequence[int] | np.ndarray | Tensor | None = None,
    split: Split | None = None,
    engine: Engine = "torch",
    C: float = 1.0,
    max_iter: int | None = None,
    tol: float = 1e-5,
    heads_per_chunk: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> HeadProbes:
    """Fit one L2 logistic-regression probe per head and measure its accuracy.

    Args:
        activations: a :class:`HeadActivations` (its labels are used unless ``labels``
            is given) or a tensor ``[n, layer, head, d_head]``.
        train_idx, val_idx: rows to fit on and to validate on.
        split: instead of the rows, a question split (:mod:`fasb_lens.splits`): its
            training and validation questions' prompts, found by the activations' groups.
        engine: ``"torch"`` (all heads at once: bound-optimisation steps, then Newton for
            heads still moving) or ``"sklearn"``
            (``LogisticRegression(C=C, max_iter=1000)`` head by head, the reference).
        C: inverse regularisation strength, as in scikit-learn.
        max_iter: the torch engine's Newton iterations after its bound steps (default 50)
            or lbfgs iterations (default 1000).
        tol: the torch engine stops a head when its gradient, divided by ``C n``, is
            below this in every coordinate (1e-5: tighter than scikit-learn's default).
        heads_per_chunk: heads solved together by the torch engine (bounds memory).
        device: where the torch engine computes (default: the activations' device).
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    train_idx, val_idx = _split_rows(activations, split, train_idx, val_idx)
    z, labels, layers = _as_inputs(activations, labels)
    n, n_layers_in, n_heads, d_head = z.shape
    layers = layers if layers is not None else tuple(range(n_layers_in))
    n_layers = (
        activations.shape.n_layers if isinstance(activations, HeadActivations) else n_layers_in
    )
    train, val = _check_rows(z, labels, layers, train_idx, val_idx)
    train_labels = labels[train]
    flat = z.reshape(n, n_layers_in * n_heads, d_head)
    weight, bias = _solve(
        flat[train],
        train_labels,
        engine,
        C=C,
        max_iter=max_iter,
        tol=tol,
        chunk=heads_per_chunk,
        device=device,
        progress=progress,
    )

    def accuracy(rows: Tensor) -> Tensor:
        logits = torch.einsum("nkd,kd->nk", flat[rows].double(), weight.double()) + bias.double()
        return ((logits > 0).long() == labels[rows, None]).double().mean(0).float()

    def to_grid(values: Tensor, fill: float) -> Tensor:
        grid = torch.full((n_layers, n_heads, *values.shape[1:]), fill, dtype=values.dtype)
        grid[list(layers)] = values.reshape(n_layers_in, n_heads, *values.shape[1:])
        return grid

    val_labels = labels[val]
    majority = max(float(val_labels.float().mean()), 1 - float(val_labels.float().mean()))
    return HeadProbes(
        weight=to_grid(weight.float(), 0.0),
        bias=to_grid(bias.float(), 0.0),
        train_accuracy=to_grid(accuracy(train), float("nan")),
        val_accuracy=to_grid(accuracy(val), float("nan")),
        train_idx=train,
        val_idx=val,
        engine=engine,
        C=C,
        val_majority=majority,
    )
