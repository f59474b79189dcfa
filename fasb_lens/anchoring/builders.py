"""From fitted probes and activations to what steering needs: each anchored head's unit
direction and its scale, the trackers' tensors, and CAA's residual vector.

Directions come from the probes (*Probe*: the probe's weight vector), from class means
(*Prototype*: mean over true answers minus mean over false answers) or, as a control,
at random; each is normalised, and its scale ``sigma_k`` is the standard deviation of
the tuning activations projected on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.activations import HeadActivations, ResidualActivations
from fasb_lens.anchoring.settings import AnchoringSettings
from fasb_lens.models import check_shape
from fasb_lens.policies import PolicySettings
from fasb_lens.probes import HeadProbes
from fasb_lens.steering import DIRECTION_KINDS, CAAVector, DirectionKind, Steering, TrackerTensors
from fasb_lens.trackers import TRACKERS, FitData, Source


def class_means(
    values: Float[Tensor, "n ..."], labels: Tensor, rows: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` over true (label 1) and over false (label 0) rows."""
    if rows is not None:
        values, labels = values[rows], labels[rows]
    if labels.min() == labels.max():
        raise ValueError("class means need both true and false prompts")
    return values[labels == 1].mean(0), values[labels == 0].mean(0)


def _labels(activations: HeadActivations | ResidualActivations) -> Tensor:
    if activations.labels is None:
        raise ValueError("class means need labelled activations")
    return activations.labels


def projection_scales(
    tuning: HeadActivations, heads: Sequence[Head], directions: Tensor
) -> Float[Tensor, " k"]:
    """Standard deviation of each head's tuning activations projected on its direction."""
    projected = (tuning.heads(heads) * directions[None]).sum(-1)
    return projected.std(dim=0, unbiased=False)


def head_spreads(
    tuning: HeadActivations, heads: Sequence[Head]
) -> Float[Tensor, "k d_head d_head"]:
    """Each head's covariance of its tuning activations (population, in float64 then
    float32): the scale along any unit direction ``d`` is ``sqrt(d^T C d)``, which
    :func:`projection_scales` gives for the chosen one and a control needs for its own."""
    z = tuning.heads(heads).double()
    centred = z - z.mean(0, keepdim=True)
    return (torch.einsum("nkd,nke->kde", centred, centred) / len(z)).float()


def _unit(vectors: Tensor) -> Tensor:
    norms = vectors.norm(dim=-1, keepdim=True)
    if (norms < 1e-12).any():
        raise ValueError("a steering direction has zero length (identical class means?)")
    return vectors / norms


def build_steering(
    probes: HeadProbes,
    activations: HeadActivations,
    tuning: HeadActivations,
    *,
    top_k: int | None = None,
    heads: Sequence[Head] | None = None,
    direction: DirectionKind = AnchoringSettings.direction,  # type: ignore[assignment]
    seed: int = 0,
    split: dict[str, Any] | None = None,
    defaults: PolicySettings | None = None,
) -> Steering:
    """Steering on the ``top_k`` best heads of ``probes`` (or on explicit ``heads``).

    Args:
        probes: fitted on ``activations`` (its train and validation rows give the
            Prototype class means, as in the authors' code).
        tuning: activations of the tuning prompts; their projections set the scales.
        direction: ``"prototype"`` (class-mean difference, the authors' released run's
            ``--use_center_of_mass``; the default), ``"probe"`` (the probe weights) or
            ``"random"`` (seeded random unit vectors, a control).
    """
    if (top_k is None) == (heads is None):
        raise ValueError("give exactly one of top_k and heads")
    if direction not in DIRECTION_KINDS:
        raise ValueError(f"direction must be 'probe', 'prototype' or 'random', got {direction!r}")
    chosen = list(heads) if heads is not None else probes.top_heads(top_k)  # type: ignore[arg-type]
    check_shape(probes.shape, activations.shape, what="the probes")
    check_shape(probes.shape, tuning.shape, what="the probes")
    rows = torch.cat([probes.train_idx, probes.val_idx])
    if direction == "probe":
        directions = _unit(probes.params(chosen)[0].clone())
    elif direction == "prototype":
        true_mean, false_mean = class_means(activations.heads(chosen), _labels(activations), rows)
        directions = _unit(true_mean - false_mean)
    else:
        generator = torch.Generator().manual_seed(seed)
        directions = _unit(torch.randn(len(chosen), probes.shape.d_head, generator=generator))
    return Steering(
        heads=tuple(chosen),
        directions=directions,
        scales=projection_scales(tuning, chosen, directions),
        spread=head_spreads(tuning, chosen),
        trackers=fit_trackers(chosen, "probing", activations, probes),
        val_accuracy=probes.val_accuracy.clone(),
        model_id=activations.info.model_id,
        shape=probes.shape,
        direction_kind=direction,
        template=activations.info.template,
        split=split,
        defaults=defaults or PolicySettings(),
    )


def fit_trackers(
    heads: Sequence[Head], source: Source, activations: HeadActivations, probes: HeadProbes
) -> TrackerTensors:
    """The tensors of every registered tracker that learns from ``source``, fitted on the
    training and validation rows of ``activations`` (``probes``: fitted on them)."""
    rows = torch.cat([probes.train_idx, probes.val_idx])
    data = FitData(tuple(heads), activations.heads(heads)[rows], _labels(activations)[rows], probes)
    return {spec.name: spec.fit(data) for spec in TRACKERS if spec.source == source}


def build_caa(residual: ResidualActivations, layer: int, rows: Tensor | None = None) -> CAAVector:
    """CAA's vector at ``layer``: the residual stream's true-minus-false class-mean
    difference over ``rows`` (see :func:`fasb_lens.activations.collect_residual_activations`)."""
    if not isinstance(residual, ResidualActivations):
        raise ValueError("CAA needs residual-stream activations (collect_residual_activations)")
    true_mean, false_mean = class_means(residual.layer(layer), _labels(residual), rows)
    return CAAVector(
        layer=layer,
        vector=true_mean - false_mean,
        model_id=residual.info.model_id,
        n_layers=residual.shape.n_layers,
    )
