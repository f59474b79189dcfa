"""What fasb_lens knows about a loaded model: its hook names, shape, id and device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head

HOOK_Z = "blocks.{layer}.attn.hook_z"
"""Per-head attention output before ``W_O``: ``[batch, pos, n_heads, d_head]``."""
HOOK_RESID_POST = "blocks.{layer}.hook_resid_post"
"""Residual stream after a block: ``[batch, pos, d_model]``."""
HOOK_RESID_PRE = "blocks.{layer}.hook_resid_pre"
"""Residual stream entering a block: ``[batch, pos, d_model]``."""
HOOK_W_O_IN = "blocks.{layer}.attn.o.hook_in"
"""The heads' outputs as ``W_O`` receives them, after any edit made at ``hook_z``."""
HOOK_FINAL = "unembed.hook_in"
"""The final residual stream, normalised: what the unembedding multiplies."""


class ShapeMismatchError(ValueError):
    """An artifact or activations made for a model of another shape."""


def hook_z_name(layer: int) -> str:
    """Name of the ``hook_z`` hook point of ``layer``."""
    return HOOK_Z.format(layer=layer)


def hook_resid_pre_name(layer: int) -> str:
    """Name of the residual-stream hook point entering block ``layer``."""
    return HOOK_RESID_PRE.format(layer=layer)


def hook_resid_post_name(layer: int) -> str:
    """Name of the residual-stream hook point after block ``layer``."""
    return HOOK_RESID_POST.format(layer=layer)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a model's attention heads, in TransformerLens vocabulary."""

    n_layers: int
    n_heads: int
    d_head: int

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_head"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def heads(self) -> list[Head]:
        """Every head, layer by layer."""
        return [Head(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def check_head(self, head: Head) -> None:
        """Raise ``ValueError`` if ``head`` does not exist in a model of this shape."""
        if not (0 <= head.layer < self.n_layers and 0 <= head.head < self.n_heads):
            raise ValueError(
                f"head {head} does not exist in a model with {self.n_layers} layers "
                f"x {self.n_heads} heads"
            )

    def to_dict(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "d_head": self.d_head}

    def describe(self) -> str:
        return f"{self.n_layers} layers x {self.n_heads} heads of {self.d_head}"


def check_shape(expected: ModelShape, actual: ModelShape, *, what: str) -> None:
    """Raise :class:`ShapeMismatchError` saying which shapes differ."""
    if expected != actual:
        raise ShapeMismatchError(
            f"{what}: made for a model with {expected.describe()}, "
            f"but this model has {actual.describe()}"
        )


def model_shape(model: TransformerBridge) -> ModelShape:
    """Layers, query heads per layer and head size of ``model``."""
    return ModelShape(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)


def site_shape(model: TransformerBridge, hook_template: str) -> ModelShape:
    """Shape of the activations at a hook site: the heads for ``hook_z``, and for the
    residual stream one "head" as wide as the model."""
    if hook_template == HOOK_Z:
        return model_shape(model)
    if hook_template == HOOK_RESID_POST:
        return ModelShape(model.cfg.n_layers, 1, model.cfg.d_model)
    raise ValueError(f"unsupported hook site {hook_template!r}")


def model_id(model: TransformerBridge) -> str:
    """The name a model was loaded under; artifacts record it."""
    return str(model.cfg.model_name)


def model_device(model: TransformerBridge) -> torch.device:
    """Device of the token embedding, where input ids must live."""
    return torch.device(model.cfg.device or "cpu")
