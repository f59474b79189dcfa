"""Steering artifacts: the anchored heads' vectors (:class:`Steering`) and CAA's vector.

A :class:`Steering` holds, for each anchored head ``k``: a unit direction ``d_k`` in the
head's ``hook_z`` space, a scale ``sigma_k`` (the standard deviation of "tuning"
activations projected on ``d_k``, so that strength is measured in natural units of that
head), and the tensors of every state tracker anchoring fitted (the probes, the class
means, ...; each tracker's registration names them). Steering at strength
``alpha`` adds ``alpha * sigma_k * d_k`` to head ``k``'s output at the chosen positions
and leaves every other head and position untouched.

A :class:`CAAVector` is the CAA baseline's artifact: one residual-stream vector after one
block. Both save as ``NAME.safetensors`` + ``NAME.json`` (:mod:`fasb_lens.storage`);
:mod:`fasb_lens.anchoring` builds them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens._types import Head, HeadGrid
from fasb_lens.decisions import DEFAULT_TRACKER, Tracker
from fasb_lens.interventions import (
    Hooks,
    Positions,
    RowHooks,
    Strength,
    hooked,
    steer_heads,
    steer_residual,
)
from fasb_lens.models import HOOK_RESID_POST, HOOK_Z, ModelShape, check_shape, model_shape
from fasb_lens.policies.base import PolicySettings
from fasb_lens.trackers import TRACKERS, build_tracker

DirectionKind = Literal["probe", "prototype", "random"]
DIRECTION_KINDS: tuple[DirectionKind, ...] = ("probe", "prototype", "random")

STEERING_VERSION = 2
"""Format of the steering artifact: 2 stores every tracker's tensors as
``tracker.{name}.{tensor}``; 1 (read too) had one field per tensor."""
_VERSION_1_TRACKERS = {
    "probe_weight": ("probe", "weight"),
    "probe_bias": ("probe", "bias"),
    "prototype_true": ("prototype", "true_mean"),
    "prototype_false": ("prototype", "false_mean"),
    "context_weight": ("context", "weight"),
    "context_bias": ("context", "bias"),
}
_DEFAULTS = ("alpha", "threshold", "backtrack_tokens")
"""The policy settings a steering artifact stores as its defaults."""

TrackerTensors = dict[str, dict[str, Tensor]]
"""Per tracker name, its per-head tensors by name (each ``[k, ...]``)."""


@dataclass
class Steering:
    """Steering vectors and tracker parameters for ``K`` anchored heads.

    Tensors are ``[K, ...]`` in the order of ``heads`` (best validation accuracy first
    when built from probes); ``val_accuracy`` is the whole ``[n_layers, n_heads]`` grid.
    ``trackers`` holds, for each tracker anchoring fitted (:mod:`fasb_lens.trackers`),
    the tensors its registration names; ``defaults`` the policy settings stored with it.
    ``spread`` is each head's covariance of its tuning activations, so that a scale can be
    measured along any direction (a random control's); artifacts written before it was
    stored have none, and their controls keep the learnt directions' scales.
    """

    heads: tuple[Head, ...]
    directions: Float[Tensor, "k d_head"]
    scales: Float[Tensor, " k"]
    trackers: TrackerTensors
    val_accuracy: HeadGrid
    model_id: str
    shape: ModelShape
    direction_kind: DirectionKind = "probe"
    template: str | None = None
    split: dict[str, Any] | None = None
    defaults: PolicySettings = field(default_factory=PolicySettings)
    spread: Float[Tensor, "k d_head d_head"] | None = None

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
            "directions": (self.directions, (k, d_head)),
            "scales": (self.scales, (k,)),
            "val_accuracy": (self.val_accuracy, (self.shape.n_layers, self.shape.n_heads)),
        }
        if self.spread is not None:
            expected["spread"] = (self.spread, (k, d_head, d_head))
        for name, tensors in self.trackers.items():
            spec = TRACKERS.get(name)
            missing = [key for key in spec.tensors if key not in tensors]
            if missing:
                raise ValueError(f"the {name} tracker's tensor {missing[0]!r} is missing")
            expected |= {f"{name}.{key}": (value, None) for key, value in tensors.items()}
        for name, (value, shape) in expected.items():
            if shape is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {shape}")
            if shape is None and (value.ndim == 0 or value.shape[0] != k):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected [{k}, ...]")
        norms = self.directions.norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            raise ValueError("directions must have unit length")
        if not torch.isfinite(self.scales).all() or (self.scales < 0).any():
            raise ValueError("scales must be finite and non-negative")
        if self.direction_kind not in DIRECTION_KINDS:
            raise ValueError(f"unknown direction kind {self.direction_kind!r}")

    @property
    def top_k(self) -> int:
        return len(self.heads)

    @property
    def first_layer(self) -> int:
        """The lowest block these vectors change (the lowest anchored head's layer)."""
        return min(head.layer for head in self.heads)

    @property
    def vectors(self) -> Float[Tensor, "k d_head"]:
        """``sigma_k * d_k``: what strength 1 adds to each head."""
        return self.scales[:, None] * self.directions

    @property
    def available_trackers(self) -> tuple[str, ...]:
        """The registered trackers whose tensors this steering holds."""
        return tuple(name for name in TRACKERS.names() if name in self.trackers)

    def tracker(self, kind: str = DEFAULT_TRACKER, **options: Any) -> Tracker:
        """The state tracker ``kind`` over the anchored heads (see :mod:`fasb_lens.trackers`)."""
        TRACKERS.resolve(kind)
        if kind not in self.trackers:
            source = TRACKERS.get(kind).source
            raise ValueError(
                f"this steering holds no {kind} tracker (it has {', '.join(self.trackers)}); "
                f"anchor with its {source} activations (fasb-lens reproduce collects them for "
                "--tracker auto)"
            )
        return build_tracker(kind, self.heads, self.trackers[kind], **options)

    def subset(self, heads: Sequence[Head]) -> Steering:
        """The same steering restricted to some of its heads (e.g. one head at a time)."""
        index = [self.heads.index(Head(*head)) for head in heads]
        return replace(
            self,
            heads=tuple(self.heads[i] for i in index),
            directions=self.directions[index],
            scales=self.scales[index],
            spread=None if self.spread is None else self.spread[index],
            trackers={
                name: {key: value[index] for key, value in tensors.items()}
                for name, tensors in self.trackers.items()
            },
        )

    def randomized(self, seed: int) -> Steering:
        """A control: the same heads and tracker, each direction replaced by a seeded random
        unit vector whose scale is the tuning activations' spread along it (as the learnt
        direction's is along itself, and as the authors' and ITI's controls measure it), so
        steering pushes by the same measure in no learnt direction. Without ``spread`` (an
        older artifact) each head keeps its learnt direction's scale."""
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(self.top_k, self.shape.d_head, generator=generator)
        directions = (directions / directions.norm(dim=-1, keepdim=True)).to(self.directions)
        scales = self.scales
        if self.spread is not None:
            spread = self.spread.to(directions)
            variance = torch.einsum("kd,kde,ke->k", directions, spread, directions)
            scales = variance.clamp(min=0).sqrt()
        return replace(self, directions=directions, scales=scales, direction_kind="random")

    # ----------------------------------------------------------------------- applying

    def hooks(self, strength: Strength, *, positions: Positions = "last", offset: int = 0) -> Hooks:
        """Forward hooks adding ``strength * sigma_k * d_k`` to each anchored head.

        Args:
            strength: a number, one per batch row (``[batch]``) or per row and position
                (``[batch, pos]``); 0 leaves an entry alone.
            positions: see :data:`fasb_lens.interventions.Positions`.
            offset: absolute position of the forward's first input (the KV cache length
                during cached decoding); used by int and per-row starts.
        """
        return steer_heads(self.heads, self.vectors, strength, positions=positions, offset=offset)

    def per_row(self, rows: Sequence[Steering]) -> RowHooks:
        """One intervention steering batch row ``r`` with ``rows[r]``'s vectors (all on
        these heads: a policy at several strengths, or a control's draws, one per row)."""
        if any(not isinstance(row, Steering) or row.heads != self.heads for row in rows):
            raise ValueError("rows of one batch must steer the same anchored heads")
        vectors = torch.stack([row.vectors for row in rows])

        def make(strength: Strength, positions: Positions, offset: int) -> Hooks:
            return steer_heads(self.heads, vectors, strength, positions=positions, offset=offset)

        return RowHooks(self.first_layer, make)

    def residual_push(self, model: TransformerBridge) -> Float[Tensor, " k"]:
        """How far strength 1 moves the residual stream through each anchored head's
        output matrix: ``||sigma_k d_k W_O^(k)||`` (what a policy's strength multiplies)."""
        self.check_model(model)
        pushes = []
        for head, vector in zip(self.heads, self.vectors, strict=True):
            w_o = model.blocks[head.layer].attn.W_O[head.head].detach()
            pushes.append((vector.to(w_o) @ w_o).float().norm().cpu())
        return torch.stack(pushes)

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
        with hooked(model, self.hooks(strength, positions=positions, offset=offset)):
            yield model

    # ----------------------------------------------------------------------- saving

    def save(self, folder: str | Path) -> Path:
        """Write ``steering.safetensors`` and ``steering.json`` into ``folder``."""
        tensors = {
            "heads": torch.tensor([list(head) for head in self.heads], dtype=torch.int64),
            "directions": self.directions.float(),
            "scales": self.scales.float(),
            "val_accuracy": self.val_accuracy.float(),
        }
        if self.spread is not None:
            tensors["spread"] = self.spread.float()
        for name, values in self.trackers.items():
            tensors |= {f"tracker.{name}.{key}": value.float() for key, value in values.items()}
        meta = {
            "model_id": self.model_id,
            **self.shape.to_dict(),
            "hook_name": HOOK_Z,
            "direction_kind": self.direction_kind,
            "top_k": self.top_k,
            "trackers": list(self.trackers),
            "template": self.template,
            "split": self.split,
            "defaults": {key: getattr(self.defaults, key) for key in _DEFAULTS},
        }
        return storage.save_artifact(
            folder, storage.STEERING, tensors, meta, version=STEERING_VERSION
        )

    @classmethod
    def load(cls, folder: str | Path, *, model: TransformerBridge | None = None) -> Steering:
        """Read a steering artifact; with ``model``, refuse one made for another shape."""
        tensors, meta = storage.load_artifact(
            folder,
            storage.STEERING,
            tensors=("heads", "directions", "scales", "val_accuracy"),
            meta=(
                "model_id",
                "n_layers",
                "n_heads",
                "d_head",
                "hook_name",
                "direction_kind",
                "defaults",
            ),
            versions=(1, STEERING_VERSION),
        )
        json_path = storage.artifact_paths(folder, storage.STEERING)[1]
        if meta["hook_name"] != HOOK_Z:
            raise storage.ArtifactError(
                f"{json_path}: steering on {meta['hook_name']!r} is not supported"
            )
        try:
            shape = ModelShape(meta["n_layers"], meta["n_heads"], meta["d_head"])
            steering = cls(
                heads=tuple(
                    Head(int(layer), int(head)) for layer, head in tensors["heads"].tolist()
                ),
                directions=tensors["directions"],
                scales=tensors["scales"],
                trackers=_tracker_tensors(tensors),
                val_accuracy=tensors["val_accuracy"],
                model_id=meta["model_id"],
                shape=shape,
                direction_kind=meta["direction_kind"],
                template=meta.get("template"),
                split=meta.get("split"),
                defaults=PolicySettings(**meta["defaults"]),
                spread=tensors.get("spread"),
            )
        except (TypeError, ValueError) as error:
            raise storage.ArtifactError(
                f"{folder}: inconsistent steering artifact: {error}"
            ) from error
        if model is not None:
            check_shape(shape, model_shape(model), what=f"the steering in {folder}")
        return steering


def _tracker_tensors(tensors: dict[str, Tensor]) -> TrackerTensors:
    """The trackers' tensors of a saved steering (format 2 names, or format 1's fields)."""
    found: TrackerTensors = {}
    for key, value in tensors.items():
        if key.startswith("tracker."):
            _, name, tensor = key.split(".", 2)
        elif key in _VERSION_1_TRACKERS:
            name, tensor = _VERSION_1_TRACKERS[key]
        else:
            continue
        found.setdefault(name, {})[tensor] = value
    return {name: found[name] for name in TRACKERS.names() if name in found}


@dataclass
class CAAVector:
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

    @property
    def first_layer(self) -> int:
        """The lowest block this vector changes (the one it is added after)."""
        return self.layer

    def hooks(self, strength: Strength, *, positions: Positions = "last", offset: int = 0) -> Hooks:
        return steer_residual(self.layer, self.vector, strength, positions=positions, offset=offset)

    def per_row(self, rows: Sequence[CAAVector]) -> RowHooks:
        """One intervention adding ``rows[r]``'s vector on batch row ``r`` (same layer)."""
        if any(not isinstance(row, CAAVector) or row.layer != self.layer for row in rows):
            raise ValueError("rows of one batch must steer the same residual layer")
        vectors = torch.stack([row.vector for row in rows])

        def make(strength: Strength, positions: Positions, offset: int) -> Hooks:
            return steer_residual(self.layer, vectors, strength, positions=positions, offset=offset)

        return RowHooks(self.layer, make)

    def check_model(self, model: TransformerBridge) -> None:
        d_model, n_layers = model.cfg.d_model, model.cfg.n_layers
        if (self.n_layers, len(self.vector)) != (n_layers, d_model):
            raise ValueError(
                f"this CAA vector was made for {self.n_layers} layers of width "
                f"{len(self.vector)}, but this model has {n_layers} of width {d_model}"
            )

    def save(self, folder: str | Path) -> Path:
        meta = {
            "model_id": self.model_id,
            "n_layers": self.n_layers,
            "layer": self.layer,
            "hook_name": HOOK_RESID_POST,
        }
        return storage.save_artifact(folder, storage.CAA, {"vector": self.vector.float()}, meta)

    @classmethod
    def load(cls, folder: str | Path) -> CAAVector:
        tensors, meta = storage.load_artifact(
            folder, storage.CAA, tensors=("vector",), meta=("layer", "model_id", "n_layers")
        )
        try:
            return cls(meta["layer"], tensors["vector"], meta["model_id"], meta["n_layers"])
        except (TypeError, ValueError) as error:
            raise storage.ArtifactError(f"{folder}: inconsistent CAA artifact: {error}") from error
