"""Anchoring's second step and the whole pipeline: probes fitted on a split, the ``top_k``
best heads' steering (and CAA's vector) built from them (:func:`fit_anchoring`), and
both steps for TruthfulQA-style questions in one call (:func:`anchor_heads`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens.activations import HeadActivations
from fasb_lens.anchoring.builders import build_caa, build_steering, fit_trackers
from fasb_lens.anchoring.collect import AnchoringActivations, collect_anchoring_activations
from fasb_lens.anchoring.settings import AnchoringSettings
from fasb_lens.data import (
    LabelledPrompt,
    ProbeAnswers,
    TruthfulQAQuestion,
    probing_prompts,
    tuning_prompts,
)
from fasb_lens.policies import PolicySettings
from fasb_lens.probes import Engine, HeadProbes, fit_head_probes
from fasb_lens.splits import Split
from fasb_lens.steering import CAAVector, DirectionKind, Steering


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
