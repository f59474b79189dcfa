"""Steering vectors on the anchored heads, how to apply them, and the steering artifact.

A :class:`Steering` holds, for each anchored head ``k``: a unit direction ``d_k`` in the
head's ``hook_z`` space, a scale ``sigma_k`` (the standard deviation of "tuning"
activations projected on ``d_k``, so that strength is measured in natural units of that
head), and the head's probe (and class means) for the state tracker. Steering at
strength ``alpha`` adds ``alpha * sigma_k * d_k`` to head ``k``'s output at the chosen
positions and leaves every other head and position untouched.

Directions come from the probes (*Probe*: the probe's weight vector), from class means
(*Prototype*: mean over true answers minus mean over false answers) or, as a control,
at random. ``save``/``load`` write and read ``steering.safetensors`` + ``steering.json``
(format in the README), never pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head, HeadGrid
from fasb_lens.activations import HeadActivations, check_shape, collect_head_activations
from fasb_lens.data import (
    PROBE_TEMPLATE,
    TUNING_TEMPLATE,
    TruthfulQAQuestion,
    probing_prompts,
    tuning_prompts,
)
from fasb_lens.models import (
    HOOK_RESID_POST,
    HOOK_Z,
    ModelShape,
    hook_resid_post_name,
    hook_z_name,
    library_versions,
    model_shape,
)
from fasb_lens.probes import (
    FORMAT_VERSION,
    HeadProbes,
    ProbeTracker,
    PrototypeTracker,
    Tracker,
    fit_head_probes,
    load_artifact,
    save_atomic,
)
from fasb_lens.splits import Split

DirectionKind = Literal["probe", "prototype", "random"]
TrackerKind = Literal["probe", "prototype"]
STEERING_NAME = "steering"
Positions = Literal["last", "all"] | int | Tensor
"""Where to steer in one forward pass: ``"last"`` position, ``"all"`` positions, an int
``p`` (every absolute position ``>= p``), a ``[batch]`` tensor of per-row start positions,
or a ``[batch, pos]`` boolean mask over the forward's input."""
Strength = float | Float[Tensor, " batch"]


@dataclass(frozen=True)
class PolicyDefaults:
    """Default FASB hyperparameters stored with a steering artifact.

    The paper's values (alpha 60, threshold 0.6, 10 backtracked tokens) were tuned for
    LLaMA2-7B-chat; calibrate them for another model before trusting them.
    """

    alpha: float = 60.0
    threshold: float = 0.6
    backtrack_tokens: int = 10

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.backtrack_tokens < 0:
            raise ValueError(f"backtrack_tokens must be non-negative, got {self.backtrack_tokens}")


@dataclass
class Steering:
    """Steering vectors and tracker probes for ``K`` anchored heads.

    Tensors are ``[K, ...]`` in the order of ``heads`` (best validation accuracy first
    when built from probes); ``val_accuracy`` is the whole ``[n_layers, n_heads]`` grid.
    """

    heads: tuple[Head, ...]
    directions: Float[Tensor, "k d_head"]
    scales: Float[Tensor, " k"]
    probe_weight: Float[Tensor, "k d_head"]
    probe_bias: Float[Tensor, " k"]
    prototype_true: Float[Tensor, "k d_head"]
    prototype_false: Float[Tensor, "k d_head"]
    val_accuracy: HeadGrid
    model_id: str
    shape: ModelShape
    direction_kind: DirectionKind = "probe"
    template: str | None = None
    split: dict[str, Any] | None = None
    defaults: PolicyDefaults = field(default_factory=PolicyDefaults)

    def __post_init__(self) -> None:
        k, d_head = len(self.heads), self.shape.d_head
        if k == 0:
            raise ValueError("steering needs at least one head")
        if len(set(self.heads)) != k:
            raise ValueError("each anchored head may appear only once")
        self.heads = tuple(Head(*head) for head in self.heads)
        for head in self.heads:
            self.shape.check_head(head)
        expected = {
            "directions": (k, d_head),
            "scales": (k,),
            "probe_weight": (k, d_head),
            "probe_bias": (k,),
            "prototype_true": (k, d_head),
            "prototype_false": (k, d_head),
            "val_accuracy": (self.shape.n_layers, self.shape.n_heads),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}"
                )
        norms = self.directions.norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            raise ValueError("directions must have unit length")
        if not torch.isfinite(self.scales).all() or (self.scales < 0).any():
            raise ValueError("scales must be finite and non-negative")
        if self.direction_kind not in ("probe", "prototype", "random"):
            raise ValueError(f"unknown direction kind {self.direction_kind!r}")

    @property
    def top_k(self) -> int:
        return len(self.heads)

    @property
    def vectors(self) -> Float[Tensor, "k d_head"]:
        """``sigma_k * d_k``: what strength 1 adds to each head."""
        return self.scales[:, None] * self.directions

    def tracker(self, kind: TrackerKind = "probe", *, temperature: float = 1.0) -> Tracker:
        """The state tracker over the anchored heads (probe or Prototype classifier)."""
        if kind == "probe":
            return ProbeTracker(self.heads, self.probe_weight, self.probe_bias)
        if kind == "prototype":
            return PrototypeTracker(
                self.heads, self.prototype_true, self.prototype_false, temperature
            )
        raise ValueError(f"tracker kind must be 'probe' or 'prototype', got {kind!r}")

    def subset(self, heads: Sequence[Head]) -> Steering:
        """The same steering restricted to some of its heads (e.g. one head at a time)."""
        index = [self.heads.index(Head(*head)) for head in heads]
        return Steering(
            heads=tuple(self.heads[i] for i in index),
            directions=self.directions[index],
            scales=self.scales[index],
            probe_weight=self.probe_weight[index],
            probe_bias=self.probe_bias[index],
            prototype_true=self.prototype_true[index],
            prototype_false=self.prototype_false[index],
            val_accuracy=self.val_accuracy,
            model_id=self.model_id,
            shape=self.shape,
            direction_kind=self.direction_kind,
            template=self.template,
            split=self.split,
            defaults=self.defaults,
        )

    # ----------------------------------------------------------------------- applying

    def hooks(
        self, strength: Strength, *, positions: Positions = "last", offset: int = 0
    ) -> list[tuple[str, Callable[..., Tensor]]]:
        """Forward hooks adding ``strength * sigma_k * d_k`` to each anchored head.

        Args:
            strength: a number, or one per batch row (``[batch]``; 0 leaves a row alone).
            positions: see :data:`Positions`.
            offset: absolute position of the forward's first input token (the KV cache
                length during cached decoding); used by int and per-row starts.
        """
        by_layer: dict[int, list[int]] = {}
        for index, head in enumerate(self.heads):
            by_layer.setdefault(head.layer, []).append(index)
        return [
            (hook_z_name(layer), self._layer_hook(indices, strength, positions, offset))
            for layer, indices in sorted(by_layer.items())
        ]

    def _layer_hook(
        self, indices: list[int], strength: Strength, positions: Positions, offset: int
    ) -> Callable[..., Tensor]:
        heads = [self.heads[i].head for i in indices]
        vectors = self.vectors[indices]

        def hook(z: Tensor, hook: Any) -> Tensor:
            return add_at_positions(z, vectors, strength, positions, offset=offset, heads=heads)

        return hook

    def check_model(self, model: TransformerBridge) -> None:
        """Refuse a model whose heads have another shape than this steering's."""
        check_shape(self.shape, model_shape(model), what="this steering")

    @contextmanager
    def apply(
        self,
        model: TransformerBridge,
        strength: Strength,
        *,
        positions: Positions = "last",
        offset: int = 0,
    ) -> Iterator[TransformerBridge]:
        """Steer every forward pass of ``model`` inside the ``with`` block."""
        self.check_model(model)
        with model.hooks(fwd_hooks=self.hooks(strength, positions=positions, offset=offset)):
            yield model

    # ----------------------------------------------------------------------- saving

    def save(self, folder: str | Path) -> Path:
        """Write ``steering.safetensors`` and ``steering.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "heads": torch.tensor([list(head) for head in self.heads], dtype=torch.int64),
            "directions": self.directions.float(),
            "scales": self.scales.float(),
            "probe_weight": self.probe_weight.float(),
            "probe_bias": self.probe_bias.float(),
            "prototype_true": self.prototype_true.float(),
            "prototype_false": self.prototype_false.float(),
            "val_accuracy": self.val_accuracy.float(),
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            **self.shape.to_dict(),
            "hook_name": HOOK_Z,
            "direction_kind": self.direction_kind,
            "top_k": self.top_k,
            "template": self.template,
            "split": self.split,
            "defaults": {
                "alpha": self.defaults.alpha,
                "threshold": self.defaults.threshold,
                "backtrack_tokens": self.defaults.backtrack_tokens,
            },
            "versions": library_versions(),
        }
        save_atomic(folder, STEERING_NAME, tensors, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, model: TransformerBridge | None = None) -> Steering:
        """Read a steering artifact; with ``model``, refuse one made for another shape."""
        tensors, meta = load_artifact(Path(folder), STEERING_NAME)
        shape = ModelShape(meta["n_layers"], meta["n_heads"], meta["d_head"])
        if model is not None:
            check_shape(shape, model_shape(model), what=f"the steering in {folder}")
        if meta.get("hook_name") != HOOK_Z:
            raise ValueError(f"{folder}: steering on {meta.get('hook_name')!r} is not supported")
        return cls(
            heads=tuple(Head(int(layer), int(head)) for layer, head in tensors["heads"].tolist()),
            directions=tensors["directions"],
            scales=tensors["scales"],
            probe_weight=tensors["probe_weight"],
            probe_bias=tensors["probe_bias"],
            prototype_true=tensors["prototype_true"],
            prototype_false=tensors["prototype_false"],
            val_accuracy=tensors["val_accuracy"],
            model_id=meta["model_id"],
            shape=shape,
            direction_kind=meta["direction_kind"],
            template=meta.get("template"),
            split=meta.get("split"),
            defaults=PolicyDefaults(**meta["defaults"]),
        )


def add_at_positions(
    x: Tensor,
    amount: Tensor,
    strength: Strength,
    positions: Positions,
    *,
    offset: int = 0,
    heads: list[int] | None = None,
) -> Tensor:
    """``x`` with ``strength * amount`` added at the chosen positions; the rest untouched.

    ``x`` is ``[batch, pos, ...]``: with ``heads``, ``[batch, pos, n_heads, d_head]`` and
    ``amount`` ``[len(heads), d_head]``; without, ``amount`` matches ``x[0, 0]``. Entries
    outside the positions (or with strength 0) keep their exact bits.
    """
    batch, n_pos = x.shape[:2]
    mask = position_mask(positions, batch, n_pos, offset=offset, device=x.device)
    rows = torch.as_tensor(strength, dtype=x.dtype, device=x.device).expand(batch)
    amount = amount.to(device=x.device, dtype=x.dtype)
    target = x[:, :, heads] if heads is not None else x
    shape = (batch, 1) + (1,) * amount.ndim
    moved = target + rows.reshape(shape) * amount
    keep = mask.reshape(batch, n_pos, *(1,) * amount.ndim)
    out = x.clone()
    if heads is not None:
        out[:, :, heads] = torch.where(keep, moved, target)
    else:
        out = torch.where(keep, moved, x)
    return out


def position_mask(
    positions: Positions, batch: int, n_pos: int, *, offset: int = 0, device: Any = None
) -> Bool[Tensor, "batch pos"]:
    """Which of a forward's ``n_pos`` input positions to steer, per row."""
    absolute = torch.arange(offset, offset + n_pos, device=device)
    if isinstance(positions, str):
        if positions == "last":
            return (absolute == offset + n_pos - 1).expand(batch, n_pos)
        if positions == "all":
            return torch.ones(batch, n_pos, dtype=torch.bool, device=device)
        raise ValueError(f"positions must be 'last', 'all', an int or a tensor, got {positions!r}")
    if isinstance(positions, int):
        return (absolute >= positions).expand(batch, n_pos)
    positions = torch.as_tensor(positions, device=device)
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch, n_pos):
            raise ValueError(
                f"a position mask must be [{batch}, {n_pos}], got {tuple(positions.shape)}"
            )
        return positions
    if tuple(positions.shape) != (batch,):
        raise ValueError(f"per-row start positions must be [{batch}], got {tuple(positions.shape)}")
    return absolute[None, :] >= positions[:, None]


# --------------------------------------------------------------------------- builders


def _unit(vectors: Tensor) -> Tensor:
    norms = vectors.norm(dim=-1, keepdim=True)
    if (norms < 1e-12).any():
        raise ValueError("a steering direction has zero length (identical class means?)")
    return vectors / norms


def class_means(
    activations: HeadActivations, heads: Sequence[Head], rows: Tensor | None = None
) -> tuple[Float[Tensor, "k d_head"], Float[Tensor, "k d_head"]]:
    """Mean activation of true and of false prompts on each head (over ``rows``)."""
    if activations.labels is None:
        raise ValueError("class means need labelled activations")
    z = activations.heads(heads)
    labels = activations.labels
    if rows is not None:
        z, labels = z[rows], labels[rows]
    if labels.min() == labels.max():
        raise ValueError("class means need both true and false prompts")
    return z[labels == 1].mean(0), z[labels == 0].mean(0)


def projection_scales(
    tuning: HeadActivations, heads: Sequence[Head], directions: Tensor
) -> Float[Tensor, " k"]:
    """Standard deviation of each head's tuning activations projected on its direction."""
    projected = (tuning.heads(heads) * directions[None]).sum(-1)
    return projected.std(dim=0, unbiased=False)


def build_steering(
    probes: HeadProbes,
    activations: HeadActivations,
    tuning: HeadActivations,
    *,
    top_k: int | None = None,
    heads: Sequence[Head] | None = None,
    direction: DirectionKind = "probe",
    seed: int = 0,
    split: dict[str, Any] | None = None,
    defaults: PolicyDefaults | None = None,
) -> Steering:
    """Steering on the ``top_k`` best heads of ``probes`` (or on explicit ``heads``).

    Args:
        probes: fitted on ``activations`` (its train and validation rows give the
            Prototype class means, as in the authors' code).
        tuning: activations of the tuning prompts; their projections set the scales.
        direction: ``"probe"`` (probe weights), ``"prototype"`` (class-mean difference)
            or ``"random"`` (seeded random unit vectors, a control).
    """
    if (top_k is None) == (heads is None):
        raise ValueError("give exactly one of top_k and heads")
    chosen = list(heads) if heads is not None else probes.top_heads(top_k)  # type: ignore[arg-type]
    check_shape(probes.shape, activations.shape, what="the probes")
    check_shape(probes.shape, tuning.shape, what="the probes")
    rows = torch.cat([probes.train_idx, probes.val_idx])
    true_mean, false_mean = class_means(activations, chosen, rows)
    weight, bias = probes.params(chosen)
    if direction == "probe":
        directions = _unit(weight.clone())
    elif direction == "prototype":
        directions = _unit(true_mean - false_mean)
    elif direction == "random":
        generator = torch.Generator().manual_seed(seed)
        directions = _unit(torch.randn(len(chosen), probes.shape.d_head, generator=generator))
    else:
        raise ValueError(f"direction must be 'probe', 'prototype' or 'random', got {direction!r}")
    return Steering(
        heads=tuple(chosen),
        directions=directions,
        scales=projection_scales(tuning, chosen, directions),
        probe_weight=weight.clone(),
        probe_bias=bias.clone(),
        prototype_true=true_mean,
        prototype_false=false_mean,
        val_accuracy=probes.val_accuracy.clone(),
        model_id=activations.info.model_id,
        shape=probes.shape,
        direction_kind=direction,
        template=activations.info.template,
        split=split,
        defaults=defaults or PolicyDefaults(),
    )


# --------------------------------------------------------------------------- CAA


CAA_NAME = "caa"


@dataclass
class ResidualSteering:
    """The CAA baseline: one residual-stream vector added after block ``layer``.

    ``vector`` is the mean residual stream (``hook_resid_post``) of true probing prompts
    minus that of false ones, unnormalised, as contrastive activation addition uses it;
    strength ``alpha`` adds ``alpha * vector``.
    """

    layer: int
    vector: Float[Tensor, " d_model"]
    model_id: str
    n_layers: int

    def __post_init__(self) -> None:
        if not 0 <= self.layer < self.n_layers:
            raise ValueError(f"layer {self.layer} is not in 0..{self.n_layers - 1}")
        if self.vector.ndim != 1:
            raise ValueError(f"vector must be [d_model], got shape {tuple(self.vector.shape)}")

    def hooks(
        self, strength: Strength, *, positions: Positions = "last", offset: int = 0
    ) -> list[tuple[str, Callable[..., Tensor]]]:
        def hook(resid: Tensor, hook: Any) -> Tensor:
            return add_at_positions(resid, self.vector, strength, positions, offset=offset)

        return [(hook_resid_post_name(self.layer), hook)]

    def check_model(self, model: TransformerBridge) -> None:
        d_model, n_layers = model.cfg.d_model, model.cfg.n_layers
        if (self.n_layers, len(self.vector)) != (n_layers, d_model):
            raise ValueError(
                f"this CAA vector was made for {self.n_layers} layers of width "
                f"{len(self.vector)}, but this model has {n_layers} of width {d_model}"
            )

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "n_layers": self.n_layers,
            "layer": self.layer,
            "hook_name": HOOK_RESID_POST,
            "versions": library_versions(),
        }
        save_atomic(folder, CAA_NAME, {"vector": self.vector.float()}, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ResidualSteering:
        tensors, meta = load_artifact(Path(folder), CAA_NAME)
        return cls(meta["layer"], tensors["vector"], meta["model_id"], meta["n_layers"])


def build_caa(
    residual: HeadActivations, layer: int, rows: Tensor | None = None
) -> ResidualSteering:
    """CAA's vector at ``layer`` from residual activations (see
    :func:`fasb_lens.activations.collect_residual_activations`), over ``rows``."""
    if residual.info.hook_name != HOOK_RESID_POST:
        raise ValueError("CAA needs residual-stream activations (collect_residual_activations)")
    true_mean, false_mean = class_means(residual, [Head(layer, 0)], rows)
    return ResidualSteering(
        layer=layer,
        vector=(true_mean - false_mean)[0],
        model_id=residual.info.model_id,
        n_layers=residual.shape.n_layers,
    )


# --------------------------------------------------------------------------- the whole step


@dataclass
class Anchoring:
    """What heads anchoring produced: activations, the probes and the steering built on them."""

    activations: HeadActivations
    tuning: HeadActivations
    probes: HeadProbes
    steering: Steering


def anchor_heads(
    model: TransformerBridge,
    questions: Sequence[TruthfulQAQuestion],
    split: Split,
    *,
    top_k: int = 24,
    direction: DirectionKind = "probe",
    tuning_seed: int = 0,
    defaults: PolicyDefaults | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Anchoring:
    """Heads anchoring in one call.

    Collects the probing and tuning activations of ``questions``, fits a probe per head on
    the split's training questions (validated on its validation questions) and builds the
    steering on the ``top_k`` best heads.
    """
    kwargs = {"batch_size": batch_size, "progress": progress}
    activations = collect_head_activations(
        model, probing_prompts(questions), template=PROBE_TEMPLATE, **kwargs
    )
    tuning = collect_head_activations(
        model, tuning_prompts(questions, seed=tuning_seed), template=TUNING_TEMPLATE, **kwargs
    )
    probes = fit_head_probes(activations, split=split, progress=progress)
    steering = build_steering(
        probes,
        activations,
        tuning,
        top_k=top_k,
        direction=direction,
        seed=tuning_seed,
        split=split.to_dict(),
        defaults=defaults,
    )
    return Anchoring(activations, tuning, probes, steering)
