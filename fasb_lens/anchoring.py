"""Heads anchoring, as one pipeline: activations -> probes -> anchored heads -> vectors.

1. **Collect** each head's output at the last token of labelled probing prompts (and of
   "tuning" prompts, whose spread sets each vector's scale; and, for the CAA baseline,
   the residual stream at one layer): :func:`collect_anchoring_activations`.
2. **Fit** a probe per head on a split's training questions, validate it on the
   validation questions, anchor the ``top_k`` best heads and build their steering
   vectors (and CAA's vector): :func:`fit_anchoring`.

:func:`anchor_heads` does both for TruthfulQA-style questions. The demo, ``fasb-lens
collect``/``fit``, the experiment runner and the multiple-choice suite all go through
these two functions.

Directions come from the probes (*Probe*: the probe's weight vector), from class means
(*Prototype*: mean over true answers minus mean over false answers) or, as a control,
at random; each is normalised, and its scale ``sigma_k`` is the standard deviation of
the tuning activations projected on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens._types import Head
from fasb_lens.activations import (
    HeadActivations,
    ResidualActivations,
    collect_head_activations,
    collect_residual_activations,
)
from fasb_lens.data import (
    PROBE_TEMPLATE,
    TUNING_TEMPLATE,
    LabelledPrompt,
    ProbeAnswers,
    TruthfulQAQuestion,
    probing_prompts,
    tuning_prompts,
)
from fasb_lens.models import ModelOptions, check_shape, tokenize
from fasb_lens.options import AT_LEAST_ONE, Bounds, option, same_option
from fasb_lens.policies import PolicySettings
from fasb_lens.prefix import SharedPrefix
from fasb_lens.probes import Engine, HeadProbes, fit_head_probes
from fasb_lens.splits import Split
from fasb_lens.steering import DIRECTION_KINDS, CAAVector, DirectionKind, Steering, TrackerTensors
from fasb_lens.trackers import TRACKERS, FitData, Source

PROBING, TUNING, RESIDUAL, CONTEXT = "probing", "tuning", "residual", "context"
"""Sub-folders of an activations folder."""


@dataclass(frozen=True)
class AnchoringSettings:
    """How heads are anchored; every default is written here once (the functions below,
    the commands and the run settings take theirs from it)."""

    top_k: int = option(24, help="anchored heads (the paper: 24)", bounds=AT_LEAST_ONE)
    direction: str = option(
        "prototype",
        help="steering directions: prototype (class-mean difference, the authors' released "
        "run) or probe (the probe weights)",
        choices=DIRECTION_KINDS,
    )
    batch_size: int = option(
        32, help="prompts per forward while collecting activations", bounds=AT_LEAST_ONE
    )
    tuning_seed: int = option(
        0, help="seed of the tuning prompts' other questions", flags=("--tuning-seed",)
    )
    engine: str = option(
        "torch",
        help="probe fitting: torch (batched) or sklearn (the reference)",
        choices=("torch", "sklearn"),
    )


@dataclass(frozen=True)
class CollectSettings:
    """What ``fasb-lens collect`` reads, with which model, and what it collects."""

    data: str = option(
        "mini",
        help="TruthfulQA: the built-in mini set (mini, the default), the bundled copy "
        "(truthfulqa), a CSV or a folder, or the hub (hub)",
        flags=("--truthfulqa",),
    )
    limit: int | None = option(None, help="only the first N questions", bounds=AT_LEAST_ONE)
    tuning: bool = option(True, help="skip the tuning prompts")
    caa_layer: int | None = option(
        None,
        help="residual layer for the CAA baseline (default: middle; -1: none)",
        bounds=Bounds(minimum=-1),
    )
    batch_size: int = same_option(AnchoringSettings, "batch_size")
    tuning_seed: int = same_option(AnchoringSettings, "tuning_seed")
    model: ModelOptions = ModelOptions()


# --------------------------------------------------------------------------- builders


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


# --------------------------------------------------------------------------- the pipeline


@dataclass
class AnchoringActivations:
    """The activations anchoring learns from; ``tuning`` may be the probing set itself."""

    probing: HeadActivations
    tuning: HeadActivations
    residual: ResidualActivations | None = None
    context: HeadActivations | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path, *, model: TransformerBridge | None = None) -> Any:
        """Read the folder :func:`collect_anchoring_activations` wrote (without tuning
        prompts, the probing activations serve as tuning ones)."""
        folder = Path(folder)
        probing = HeadActivations.load(folder / PROBING, model=model)
        tuning = (
            HeadActivations.load(folder / TUNING, model=model)
            if (folder / TUNING).is_dir()
            else probing
        )
        residual = (
            ResidualActivations.load(folder / RESIDUAL, model=model)
            if (folder / RESIDUAL).is_dir()
            else None
        )
        context = (
            HeadActivations.load(folder / CONTEXT, model=model)
            if (folder / CONTEXT).is_dir()
            else None
        )
        return cls(probing, tuning, residual, context)  # type: ignore[arg-type]


def collect_anchoring_activations(
    model: TransformerBridge,
    probing: Sequence[LabelledPrompt],
    tuning: Sequence[LabelledPrompt] | None = None,
    *,
    residual_layer: int | None = None,
    context: Sequence[LabelledPrompt] | None = None,
    templates: tuple[str | None, str | None] = (PROBE_TEMPLATE, TUNING_TEMPLATE),
    out_dir: str | Path | None = None,
    batch_size: int = AnchoringSettings.batch_size,
    progress: bool = True,
) -> AnchoringActivations:
    """Head activations of the probing (and tuning) prompts, with ``residual_layer`` the
    residual stream of the probing prompts at that layer (for CAA), and with ``context``
    the heads on the same answers inside the evaluation prompt (for the context tracker;
    their shared instruction and primer run once).

    With ``out_dir`` each set streams into its sub-folder (``probing/``, ``tuning/``,
    ``residual/``, ``context/``) and an interrupted collection resumes. Without ``tuning``
    the probing activations also set the scales.
    """
    folder = Path(out_dir) if out_dir is not None else None
    options = {"batch_size": batch_size, "progress": progress}
    seconds: dict[str, float] = {}

    def timed(name: str, collect: Any, prompts: Sequence[LabelledPrompt], **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = None if folder is None else folder / name
        result = collect(model, prompts, out_dir=out, **options, **kwargs)
        seconds[name] = round(time.perf_counter() - start, 1)
        return result

    residual = None
    if residual_layer is not None:
        residual = timed(
            RESIDUAL,
            collect_residual_activations,
            probing,
            layers=[residual_layer],
            template=templates[0],
        )
    heads = timed(PROBING, collect_head_activations, probing, template=templates[0])
    tuned = (
        heads
        if tuning is None
        else timed(TUNING, collect_head_activations, tuning, template=templates[1])
    )
    inside = None
    if context is not None:
        ids = tokenize(model, [prompt.text for prompt in context])
        shared = SharedPrefix.build(model, ids)
        inside = timed(
            CONTEXT,
            collect_head_activations,
            context,
            shared=shared,
            template="instruction + primer + Q: {question}\nA: {answer}",
        )
    return AnchoringActivations(heads, tuned, residual, inside, seconds)


@dataclass
class Anchoring:
    """What heads anchoring produced: the activations, the probes, the steering (and CAA)."""

    activations: HeadActivations
    tuning: HeadActivations
    probes: HeadProbes
    steering: Steering
    caa: CAAVector | None = None

    def save(self, folder: str | Path) -> Path:
        """Write the probes, the steering (and the CAA vector) into ``folder``; they
        appear together, or not at all if writing fails."""
        with storage.staged(folder) as stage:
            self.probes.save(stage)
            self.steering.save(stage)
            if self.caa is not None:
                self.caa.save(stage)
        return Path(folder)


def fit_anchoring(
    activations: AnchoringActivations,
    split: Split,
    *,
    top_k: int = AnchoringSettings.top_k,
    direction: DirectionKind = AnchoringSettings.direction,  # type: ignore[assignment]
    seed: int = 0,
    defaults: PolicySettings | None = None,
    engine: Engine = AnchoringSettings.engine,  # type: ignore[assignment]
    progress: bool = True,
    device: str | torch.device | None = None,
) -> Anchoring:
    """Probes on the split's training questions (validated on its validation ones), the
    ``top_k`` best heads' steering, and CAA's vector when residual activations exist;
    ``device`` is where the torch engine fits the probes (default: the activations', the
    CPU).

    ``seed`` seeds random directions; class means and CAA use the training and
    validation rows; with context activations the anchored heads also get context probes
    (the ``context`` tracker), fitted on the same split.
    """
    probing = activations.probing
    probes = fit_head_probes(probing, split=split, engine=engine, progress=progress, device=device)
    steering = build_steering(
        probes,
        probing,
        activations.tuning,
        top_k=top_k,
        direction=direction,
        seed=seed,
        split=split.to_dict(),
        defaults=defaults,
    )
    caa = None
    if activations.residual is not None:
        rows = torch.cat([probes.train_idx, probes.val_idx])
        caa = build_caa(activations.residual, activations.residual.layers[0], rows)
    if activations.context is not None:
        inside = fit_head_probes(
            activations.context, split=split, engine=engine, progress=False, device=device
        )
        context = fit_trackers(steering.heads, "context", activations.context, inside)
        steering = replace(steering, trackers={**steering.trackers, **context})
    return Anchoring(probing, activations.tuning, probes, steering, caa)


def truthfulqa_prompts(
    questions: Sequence[TruthfulQAQuestion],
    *,
    tuning_seed: int = AnchoringSettings.tuning_seed,
    answers: ProbeAnswers = "auto",
) -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """TruthfulQA's probing and tuning prompts (see :mod:`fasb_lens.data.prompts`)."""
    return (
        probing_prompts(questions, answers=answers),
        tuning_prompts(questions, seed=tuning_seed, answers=answers),
    )


def anchor_heads(
    model: TransformerBridge,
    questions: Sequence[TruthfulQAQuestion],
    split: Split,
    *,
    top_k: int = AnchoringSettings.top_k,
    direction: DirectionKind = AnchoringSettings.direction,  # type: ignore[assignment]
    tuning_seed: int = AnchoringSettings.tuning_seed,
    answers: ProbeAnswers = "auto",
    defaults: PolicySettings | None = None,
    residual_layer: int | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = AnchoringSettings.batch_size,
    progress: bool = True,
) -> Anchoring:
    """Heads anchoring of TruthfulQA-style ``questions`` in one call.

    Collects the probing and tuning activations, fits a probe per head on the split's
    training questions (validated on its validation questions) and builds the steering
    on the ``top_k`` best heads (and CAA's vector at ``residual_layer``, if given).
    """
    probing, tuning = truthfulqa_prompts(questions, tuning_seed=tuning_seed, answers=answers)
    activations = collect_anchoring_activations(
        model,
        probing,
        tuning,
        residual_layer=residual_layer,
        out_dir=out_dir,
        batch_size=batch_size,
        progress=progress,
    )
    return fit_anchoring(
        activations,
        split,
        top_k=top_k,
        direction=direction,
        seed=tuning_seed,
        defaults=defaults,
        progress=progress,
    )
