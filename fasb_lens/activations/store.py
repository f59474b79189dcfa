"""Saved activations: what was collected, for which prompts, and how it was made.

A :class:`HeadActivations` holds ``hook_z`` of every collected head at one position per
prompt (``z``: ``[n, layer, head, d_head]``), a :class:`ResidualActivations` the residual
stream; both keep each prompt's text, label and question group and an
:class:`ActivationInfo` (model, hook, position rule, template, library versions). They
save as ``head_activations.json`` + numbered safetensors shards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens._types import Head, HeadZ
from fasb_lens.models import HOOK_RESID_POST, HOOK_Z, ModelShape, check_shape, site_shape

logger = logging.getLogger(__name__)

Position = Literal["last"]


@dataclass(frozen=True)
class ActivationInfo:
    """How a set of activations was made; saved in the JSON next to the tensors."""

    model_id: str
    shape: ModelShape
    layers: tuple[int, ...]
    hook_name: str = HOOK_Z
    position: Position = "last"
    template: str | None = None
    prepend_bos: bool | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": storage.FORMAT_VERSION,
            "model_id": self.model_id,
            **self.shape.to_dict(),
            "layers": list(self.layers),
            "hook_name": self.hook_name,
            "position": self.position,
            "template": self.template,
            "prepend_bos": self.prepend_bos,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActivationInfo:
        version = data.get("format_version")
        if version != storage.FORMAT_VERSION:
            raise storage.ArtifactError(
                f"head activations format {version!r} is not supported "
                f"(expected {storage.FORMAT_VERSION})"
            )
        missing = [
            key
            for key in (
                "model_id",
                "n_layers",
                "n_heads",
                "d_head",
                "layers",
                "hook_name",
                "position",
            )
            if key not in data
        ]
        if missing:
            raise storage.ArtifactError(f"activation metadata lacks the key {missing[0]!r}")
        return cls(
            model_id=data["model_id"],
            shape=ModelShape(data["n_layers"], data["n_heads"], data["d_head"]),
            layers=tuple(data["layers"]),
            hook_name=data["hook_name"],
            position=data["position"],
            template=data.get("template"),
            prepend_bos=data.get("prepend_bos"),
            versions=dict(data.get("versions", {})),
        )


@dataclass
class Activations:
    """Activations at one site and one position per prompt, with the prompts' labels.

    ``z[i, j]`` is prompt ``i``'s activation in layer ``layers[j]`` (``layers`` is every
    layer unless collection asked for fewer), shaped per site by the subclasses.
    ``labels`` (1 true, 0 false) and ``groups`` (question ids) are present when the prompts
    were :class:`LabelledPrompt`.
    """

    SITE: ClassVar[str] = HOOK_Z

    z: HeadZ
    prompts: list[str]
    info: ActivationInfo
    labels: Int[Tensor, " n"] | None = None
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        expected = (n, len(self.info.layers), self.info.shape.n_heads, self.info.shape.d_head)
        if tuple(self.z.shape) != expected:
            raise ValueError(f"z has shape {tuple(self.z.shape)}, expected {expected}")
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise ValueError(f"{len(self.labels)} labels for {n} prompts")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"{len(self.groups)} groups for {n} prompts")
        if self.info.hook_name != self.SITE:
            raise ValueError(
                f"{type(self).__name__} holds {self.SITE!r} activations, "
                f"not {self.info.hook_name!r}"
            )

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.info.layers

    @property
    def shape(self) -> ModelShape:
        return self.info.shape

    def _layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not collected (have {list(self.layers)})")
        return self.layers.index(layer)

    def select(self, index: Sequence[int] | Tensor) -> Activations:
        """The rows ``index`` (e.g. one split of the prompts)."""
        rows = torch.as_tensor(index, dtype=torch.long)
        picked = rows.tolist()
        return type(self)(
            z=self.z[rows],
            prompts=[self.prompts[i] for i in picked],
            info=self.info,
            labels=None if self.labels is None else self.labels[rows],
            groups=None if self.groups is None else [self.groups[i] for i in picked],
        )

    def check_model(self, model: TransformerBridge) -> None:
        """Refuse a model whose shape differs from the activations'."""
        check_shape(self.shape, site_shape(model, self.info.hook_name), what="these activations")

    def save(self, folder: str | Path) -> Path:
        """Write ``head_activations.json`` and one safetensors shard into ``folder``."""
        folder = Path(folder)
        shard = write_shard(folder, 0, len(self), self.z, self.labels)
        manifest = new_manifest(
            self.info, self.prompts, self.groups, has_labels=self.labels is not None
        )
        storage.write_json(
            folder / storage.ACTIVATIONS_MANIFEST, {**manifest, "shards": [shard], "complete": True}
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, model: TransformerBridge | None = None) -> Activations:
        """Read activations saved by :meth:`save` or by a streaming collection.

        With ``model``, refuse activations made for a model of another shape.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        if not manifest["complete"]:
            raise storage.ArtifactError(
                f"{folder} holds an unfinished collection ({len(manifest['shards'])} shards); "
                "run the same collection again to finish it"
            )
        info = ActivationInfo.from_dict(manifest)
        if info.hook_name != cls.SITE:
            raise storage.ArtifactError(
                f"{folder} holds {info.hook_name!r} activations, not {cls.SITE!r} ({cls.__name__})"
            )
        if model is not None:
            actual = site_shape(model, info.hook_name)
            check_shape(info.shape, actual, what=f"the activations in {folder}")
        zs, labels = zip(*(read_shard(folder / name) for name in manifest["shards"]), strict=True)
        return cls(
            z=torch.cat(zs),
            prompts=list(manifest["prompts"]),
            info=info,
            labels=torch.cat(labels) if manifest["has_labels"] else None,
            groups=manifest["groups"],
        )


class HeadActivations(Activations):
    """``hook_z`` of every collected head: ``z`` is ``[n, layer, head, d_head]``."""

    SITE: ClassVar[str] = HOOK_Z

    def head(self, head: Head) -> Float[Tensor, "n d_head"]:
        """Activations of one head over all prompts."""
        self.shape.check_head(head)
        return self.z[:, self._layer_index(head.layer), head.head]

    def heads(self, heads: Sequence[Head]) -> Float[Tensor, "n k d_head"]:
        """Activations of several heads, stacked in the order given."""
        return torch.stack([self.head(head) for head in heads], dim=1)


class ResidualActivations(Activations):
    """The residual stream after each collected block (``hook_resid_post``).

    Stored like head activations with one "head" as wide as the model, so ``z`` is
    ``[n, layer, 1, d_model]``; :meth:`layer` gives one layer's ``[n, d_model]``.
    """

    SITE: ClassVar[str] = HOOK_RESID_POST

    def layer(self, layer: int) -> Float[Tensor, "n d_model"]:
        """The residual stream after block ``layer`` over all prompts."""
        return self.z[:, self._layer_index(layer), 0]


def write_shard(folder: Path, start: int, stop: int, z: Tensor, labels: Tensor | None) -> str:
    name = storage.ACTIVATIONS_SHARD.format(start=start, stop=stop)
    tensors = {"z": z}
    if labels is not None:
        tensors["labels"] = labels
    storage.save_tensors(folder / name, tensors)
    return name


def read_shard(path: Path) -> tuple[Tensor, Tensor | None]:
    tensors = storage.load_tensors(path, required=("z",))
    return tensors["z"], tensors.get("labels")


def new_manifest(
    info: ActivationInfo, prompts: list[str], groups: list[str] | None, *, has_labels: bool
) -> dict[str, Any]:
    """The JSON half of saved activations, without its shard list."""
    return {
        **info.to_dict(),
        "n": len(prompts),
        "complete": False,
        "shards": [],
        "prompts": prompts,
        "groups": groups,
        "has_labels": has_labels,
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / storage.ACTIVATIONS_MANIFEST
    if not path.is_file():
        raise storage.ArtifactError(
            f"{folder} holds no activations ({storage.ACTIVATIONS_MANIFEST} is missing)"
        )
    manifest = storage.read_json(path, "an activations manifest")
    missing = [
        key
        for key in ("complete", "shards", "prompts", "groups", "has_labels")
        if not isinstance(manifest, dict) or key not in manifest
    ]
    if missing:
        raise storage.ArtifactError(f"{path} is incomplete: key {missing[0]!r} is missing")
    return manifest
