"""Collecting per-head attention outputs (``hook_z``) at one position of many prompts.

The probes of FASB read each head's output before ``W_O`` at a prompt's last token. For
thousands of prompts this is the costliest step of heads anchoring, so collection

* sorts prompts by length and batches neighbours, so little padding is computed;
* gathers only the last real token of each row inside the hook (never the whole cache);
* stops the forward pass as soon as the last requested layer's ``hook_z`` has fired, so
  the rest of that layer, later layers and the unembedding are never computed;
* can stream to disk in chunks, so a long run that is killed resumes where it stopped.

A :class:`HeadActivations` holds the result: ``z`` of shape ``[n, layer, head, d_head]``
plus each prompt's text, label and question group, and how it was made (model, hook,
position rule, template, library versions). It saves as safetensors + JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head, HeadZ
from fasb_lens.data.schema import LabelledPrompt
from fasb_lens.models import (
    HOOK_RESID_POST,
    HOOK_Z,
    ModelShape,
    forward,
    library_versions,
    model_device,
    model_id,
    pad,
    pad_token_id,
    site_shape,
    tokenize,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "head_activations.json"
SHARD_PATTERN = "head_activations-{start:08d}-{stop:08d}.safetensors"
Position = Literal["last"]
PaddingSide = Literal["left", "right"]


class _StopForward(Exception):
    """Raised by the last collection hook: nothing after it is needed."""


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
            "format_version": FORMAT_VERSION,
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
        if version != FORMAT_VERSION:
            raise ValueError(
                f"head activations format {version!r} is not supported (expected {FORMAT_VERSION})"
            )
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
class HeadActivations:
    """``hook_z`` of every collected head at one position per prompt.

    ``z[i, j, h]`` is head ``h`` of layer ``layers[j]`` on prompt ``i`` (``layers`` is
    every layer unless collection asked for fewer). ``labels`` (1 true, 0 false) and
    ``groups`` (question ids) are present when the prompts were :class:`LabelledPrompt`.
    """

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

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.info.layers

    @property
    def shape(self) -> ModelShape:
        return self.info.shape

    def head(self, head: Head) -> Float[Tensor, "n d_head"]:
        """Activations of one head over all prompts."""
        self.shape.check_head(head)
        if head.layer not in self.layers:
            raise KeyError(f"layer {head.layer} was not collected (have {list(self.layers)})")
        return self.z[:, self.layers.index(head.layer), head.head]

    def heads(self, heads: Sequence[Head]) -> Float[Tensor, "n k d_head"]:
        """Activations of several heads, stacked in the order given."""
        return torch.stack([self.head(head) for head in heads], dim=1)

    def select(self, index: Sequence[int] | Tensor) -> HeadActivations:
        """The rows ``index`` (e.g. one split of the prompts)."""
        rows = torch.as_tensor(index, dtype=torch.long)
        picked = rows.tolist()
        return HeadActivations(
            z=self.z[rows],
            prompts=[self.prompts[i] for i in picked],
            info=self.info,
            labels=None if self.labels is None else self.labels[rows],
            groups=None if self.groups is None else [self.groups[i] for i in picked],
        )

    def check_model(self, model: TransformerBridge) -> None:
        """Refuse a model whose heads have another shape than the activations'."""
        check_shape(self.shape, site_shape(model, self.info.hook_name), what="these activations")

    def save(self, folder: str | Path) -> Path:
        """Write ``head_activations.json`` and one safetensors shard into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shard = _write_shard(folder, 0, len(self), self.z, self.labels)
        manifest = _manifest(
            self.info, self.prompts, self.groups, has_labels=self.labels is not None
        )
        _write_manifest(folder, {**manifest, "shards": [shard], "complete": True})
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, model: TransformerBridge | None = None) -> HeadActivations:
        """Read activations saved by :meth:`save` or by a streaming collection.

        With ``model``, refuse activations made for a model of another shape.
        """
        manifest = _read_manifest(Path(folder))
        if not manifest["complete"]:
            raise ValueError(
                f"{folder} holds an unfinished collection ({len(manifest['shards'])} shards); "
                "run the same collection again to finish it"
            )
        info = ActivationInfo.from_dict(manifest)
        if model is not None:
            actual = site_shape(model, info.hook_name)
            check_shape(info.shape, actual, what=f"the activations in {folder}")
        zs, labels = zip(
            *(_read_shard(Path(folder) / name) for name in manifest["shards"]), strict=True
        )
        return cls(
            z=torch.cat(zs),
            prompts=list(manifest["prompts"]),
            info=info,
            labels=torch.cat(labels) if manifest["has_labels"] else None,
            groups=manifest["groups"],
        )


def check_shape(expected: ModelShape, actual: ModelShape, *, what: str) -> None:
    """Raise a ``ValueError`` saying which dimension differs."""
    if expected != actual:
        raise ValueError(
            f"{what} were made for a model with {expected.describe()}, "
            f"but this model has {actual.describe()}"
        )


def _write_shard(folder: Path, start: int, stop: int, z: Tensor, labels: Tensor | None) -> str:
    name = SHARD_PATTERN.format(start=start, stop=stop)
    tensors = {"z": z.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    temporary = folder / (name + ".partial")
    save_file(tensors, temporary)
    os.replace(temporary, folder / name)
    return name


def _read_shard(path: Path) -> tuple[Tensor, Tensor | None]:
    with safe_open(path, framework="pt") as handle:
        keys = set(handle.keys())
        z = handle.get_tensor("z")
        labels = handle.get_tensor("labels") if "labels" in keys else None
    return z, labels


def _manifest(
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


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    temporary = folder / (MANIFEST_NAME + ".partial")
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, folder / MANIFEST_NAME)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} holds no head activations")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- collection


@dataclass(frozen=True)
class _Batch:
    rows: list[int]  # indices into the prompt list
    ids: Tensor
    mask: Tensor
    last: Tensor  # index of each row's last real token


def _batches(
    token_lists: Sequence[Sequence[int]],
    order: Sequence[int],
    batch_size: int,
    *,
    pad_id: int,
    side: PaddingSide,
    device: torch.device,
) -> Iterator[_Batch]:
    for start in range(0, len(order), batch_size):
        rows = list(order[start : start + batch_size])
        ids, mask = pad([token_lists[i] for i in rows], pad_id=pad_id, side=side, device=device)
        if side == "left":
            last = torch.full((len(rows),), ids.shape[1] - 1, device=device)
        else:
            last = mask.sum(dim=1) - 1
        yield _Batch(rows, ids, mask, last)


def length_sorted(token_lists: Sequence[Sequence[int]]) -> list[int]:
    """Indices ordered longest first, so batches hold prompts of similar length."""
    return sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))


def gather_last_position(
    model: TransformerBridge,
    token_lists: Sequence[Sequence[int]],
    hook_names: Sequence[str],
    *,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    progress: bool | tqdm = True,
) -> dict[str, Tensor]:
    """``{hook name: activations at each prompt's last token}`` in prompt order (float32).

    The forward pass stops right after the last of ``hook_names`` fires; the names must
    be in the order the model computes them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = model_device(model)
    store: dict[str, Tensor] = {}
    current: list[_Batch] = []

    def make_hook(name: str, is_last: bool) -> Callable[..., Tensor]:
        def hook(activation: Tensor, hook: Any) -> Tensor:
            batch = current[0]
            picked = activation[torch.arange(len(batch.rows), device=device), batch.last]
            if name not in store:
                store[name] = torch.empty((len(token_lists), *picked.shape[1:]))
            store[name][batch.rows] = picked.float().cpu()
            if is_last:
                raise _StopForward
            return activation

        return hook

    hooks = [(name, make_hook(name, i == len(hook_names) - 1)) for i, name in enumerate(hook_names)]
    bar = (
        progress
        if isinstance(progress, tqdm)
        else tqdm(total=len(token_lists), desc="activations", unit="prompt", disable=not progress)
    )
    order = length_sorted(token_lists)
    batches = _batches(
        token_lists,
        order,
        batch_size,
        pad_id=pad_token_id(model),
        side=padding_side,
        device=device,
    )
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        for batch in batches:
            current[:] = [batch]
            try:
                forward(model, batch.ids, batch.mask)
            except _StopForward:
                pass
            bar.update(len(batch.rows))
    if not isinstance(progress, tqdm):
        bar.close()
    return store


def _as_prompts(
    prompts: Sequence[str | LabelledPrompt],
) -> tuple[list[str], Tensor | None, list[str] | None]:
    if isinstance(prompts, str):
        raise TypeError("expected a sequence of prompts, not one string")
    texts = [p.text if isinstance(p, LabelledPrompt) else p for p in prompts]
    if not texts:
        raise ValueError("no prompts to collect activations for")
    if all(isinstance(p, LabelledPrompt) for p in prompts):
        labelled: list[LabelledPrompt] = list(prompts)  # type: ignore[arg-type]
        return texts, torch.tensor([p.label for p in labelled]), [p.group for p in labelled]
    return texts, None, None


def _check_layers(layers: Sequence[int] | None, shape: ModelShape) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(shape.n_layers))
    chosen = tuple(sorted(set(int(layer) for layer in layers)))
    bad = [layer for layer in chosen if not 0 <= layer < shape.n_layers]
    if bad or not chosen:
        raise ValueError(f"layers {bad or '[]'} are not in 0..{shape.n_layers - 1}")
    return chosen


def collect_head_activations(
    model: TransformerBridge,
    prompts: Sequence[str | LabelledPrompt],
    *,
    position: Position = "last",
    batch_size: int = 32,
    layers: Sequence[int] | None = None,
    padding_side: PaddingSide = "right",
    prepend_bos: bool | None = None,
    template: str | None = None,
    out_dir: str | Path | None = None,
    chunk_size: int = 2048,
    progress: bool = True,
) -> HeadActivations:
    """``hook_z`` of every head (of ``layers``) at each prompt's last real token.

    Args:
        prompts: texts, or :class:`LabelledPrompt` (then labels and groups are kept).
        position: only ``"last"``, the last real token of each prompt.
        batch_size: prompts per forward pass (after sorting by length).
        layers: layers to collect (default all); later layers are never computed.
        padding_side: how batches are padded; results do not depend on it.
        prepend_bos: override the model's BOS rule (see :mod:`fasb_lens.models`).
        template: the prompt template, recorded with the activations.
        out_dir: stream to this folder in chunks of ``chunk_size`` prompts; chunks already
            there from an interrupted run with the same prompts are not recomputed.
    """
    return _collect(model, prompts, HOOK_Z, **_options(locals()))


def collect_residual_activations(
    model: TransformerBridge,
    prompts: Sequence[str | LabelledPrompt],
    *,
    position: Position = "last",
    batch_size: int = 32,
    layers: Sequence[int] | None = None,
    padding_side: PaddingSide = "right",
    prepend_bos: bool | None = None,
    template: str | None = None,
    out_dir: str | Path | None = None,
    chunk_size: int = 2048,
    progress: bool = True,
) -> HeadActivations:
    """The residual stream after each block (``hook_resid_post``) at each last token.

    Stored like head activations with one "head" as wide as the model:
    ``z`` is ``[n, layer, 1, d_model]``. The CAA baseline's vector comes from these.
    """
    return _collect(model, prompts, HOOK_RESID_POST, **_options(locals()))


def _options(arguments: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in arguments.items() if key not in ("model", "prompts")}


def _collect(
    model: TransformerBridge,
    prompts: Sequence[str | LabelledPrompt],
    hook_template: str,
    *,
    position: Position,
    batch_size: int,
    layers: Sequence[int] | None,
    padding_side: PaddingSide,
    prepend_bos: bool | None,
    template: str | None,
    out_dir: str | Path | None,
    chunk_size: int,
    progress: bool,
) -> HeadActivations:
    if position != "last":
        raise ValueError(f"position must be 'last', got {position!r}")
    texts, labels, groups = _as_prompts(prompts)
    shape = site_shape(model, hook_template)
    info = ActivationInfo(
        model_id=model_id(model),
        shape=shape,
        layers=_check_layers(layers, shape),
        hook_name=hook_template,
        position=position,
        template=template,
        prepend_bos=bool(model.cfg.default_prepend_bos) if prepend_bos is None else prepend_bos,
        versions=library_versions(),
    )
    token_lists = tokenize(model, texts, prepend_bos=prepend_bos)
    names = [hook_template.format(layer=layer) for layer in info.layers]

    def run(rows: range, bar: bool | tqdm) -> Tensor:
        gathered = gather_last_position(
            model,
            [token_lists[i] for i in rows],
            names,
            batch_size=batch_size,
            padding_side=padding_side,
            progress=bar,
        )
        z = torch.stack([gathered[name] for name in names], dim=1)
        return z.reshape(len(rows), len(names), shape.n_heads, shape.d_head)

    if out_dir is None:
        z = run(range(len(texts)), progress)
        return HeadActivations(z=z, prompts=texts, info=info, labels=labels, groups=groups)
    manifest = {
        **_manifest(info, texts, groups, has_labels=labels is not None),
        "fingerprint": _fingerprint(texts, info),
    }
    _collect_streaming(Path(out_dir), manifest, labels, run, chunk_size, progress)
    return HeadActivations.load(out_dir)


def _fingerprint(texts: Sequence[str], info: ActivationInfo) -> str:
    """A hash of the prompts and settings, so a resumed run never mixes two collections."""
    digest = hashlib.sha256()
    settings = {key: value for key, value in info.to_dict().items() if key != "versions"}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def _collect_streaming(
    folder: Path,
    manifest: dict[str, Any],
    labels: Tensor | None,
    run: Callable[[range, bool | tqdm], Tensor],
    chunk_size: int,
    progress: bool,
) -> None:
    """Collect chunk by chunk into ``folder``, resuming from the chunks already there."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    folder.mkdir(parents=True, exist_ok=True)
    n = manifest["n"]
    shards: list[str] = []
    if (folder / MANIFEST_NAME).is_file():
        previous = _read_manifest(folder)
        if previous.get("fingerprint") != manifest["fingerprint"]:
            raise ValueError(
                f"{folder} holds activations of other prompts or settings; "
                "choose another folder or delete it"
            )
        shards = [name for name in previous["shards"] if (folder / name).is_file()]
    first = min(len(shards) * chunk_size, n)
    bar = tqdm(total=n, initial=first, desc="activations", unit="prompt", disable=not progress)
    for start in range(first, n, chunk_size):
        stop = min(start + chunk_size, n)
        z = run(range(start, stop), bar)
        shards.append(
            _write_shard(folder, start, stop, z, None if labels is None else labels[start:stop])
        )
        _write_manifest(folder, {**manifest, "shards": shards})
    bar.close()
    _write_manifest(folder, {**manifest, "shards": shards, "complete": True})
