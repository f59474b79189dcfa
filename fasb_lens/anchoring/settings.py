"""How heads are anchored (:class:`AnchoringSettings`) and what ``fasb-lens collect``
collects (:class:`CollectSettings`): every default of anchoring written once."""

from __future__ import annotations

from dataclasses import dataclass

from fasb_lens.models import ModelOptions
from fasb_lens.options import AT_LEAST_ONE, Bounds, option, same_option
from fasb_lens.steering import DIRECTION_KINDS


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
