"""Anchoring's first step: each head's output at the last token of labelled prompts
(probing, tuning, and for the context tracker the answers inside the evaluation prompt),
and for CAA the residual stream at one layer; on disk, one sub-folder per set."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.activations import (
    HeadActivations,
    ResidualActivations,
    collect_head_activations,
    collect_residual_activations,
)
from fasb_lens.anchoring.settings import AnchoringSettings
from fasb_lens.data import PROBE_TEMPLATE, TUNING_TEMPLATE, LabelledPrompt
from fasb_lens.models import tokenize
from fasb_lens.prefix import SharedPrefix

PROBING, TUNING, RESIDUAL, CONTEXT = "probing", "tuning", "residual", "context"
"""Sub-folders of an activations folder."""


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
