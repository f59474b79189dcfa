"""Collecting activations at the last token of many prompts, fast and resumable.

The probes of FASB read each head's output before ``W_O`` at a prompt's last token. For
thousands of prompts this is the costliest step of heads anchoring, so collection

* runs a batch's prompts as token trees, so the beginning prompts share (a question
  asked with each of its answers) is computed once and nothing is padded but the trees;
* gathers only the last real token of each row inside the hook (never the whole cache);
* stops the forward pass as soon as the last requested layer's hook has fired, so the
  rest of that layer, later layers and the unembedding are never computed;
* can stream to disk in chunks, so a long run that is killed resumes where it stopped;
  under ``torchrun`` the processes collect different pieces of the chunks (cut at batch
  boundaries, so every batch is the one a single process runs) into the same folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens.activations.store import (
    ActivationInfo,
    Activations,
    HeadActivations,
    Position,
    ResidualActivations,
    new_manifest,
    read_manifest,
    write_shard,
)
from fasb_lens.data.schema import LabelledPrompt
from fasb_lens.interventions import Site, StopForward, capture
from fasb_lens.models import (
    HOOK_RESID_POST,
    HOOK_Z,
    ModelShape,
    forward,
    model_device,
    model_id,
    pad_token_id,
    site_shape,
    tokenize,
)
from fasb_lens.prefix import SharedPrefix
from fasb_lens.trees import TokenTree

SITES: dict[str, Site] = {HOOK_Z: "z", HOOK_RESID_POST: "resid_post"}
"""The hook template of each site activations can be collected at."""


@dataclass(frozen=True)
class _Batch:
    """A forward's prompts as token trees, one tree per row: prompts that begin with the
    same token share a tree, so a question's prompts run its question once."""

    rows: list[int]  # indices into the prompt list, in the order ``at`` reads them
    ids: Tensor  # [trees, width] each tree's node tokens (padding after)
    sees: Tensor  # [trees, 1, width, width] which nodes each node attends to
    depth: Tensor  # [trees, width] each node's position in its prompt
    at: tuple[Tensor, Tensor]  # (tree, node) of each prompt's last token


def _batches(
    token_lists: Sequence[Sequence[int]], batch_size: int, *, pad_id: int, device: torch.device
) -> Iterator[_Batch]:
    """``batch_size`` consecutive prompts per forward (keep a question's prompts together
    to share the most), packed as token trees."""
    for start in range(0, len(token_lists), batch_size):
        groups: dict[int, list[int]] = {}
        for index in range(start, min(start + batch_size, len(token_lists))):
            if not token_lists[index]:
                raise ValueError(f"prompt {index} has no tokens")
            groups.setdefault(token_lists[index][0], []).append(index)
        trees = [
            TokenTree.build(first, [token_lists[i][1:] for i in members], leaves=True)
            for first, members in groups.items()
        ]
        width = max(len(tree) for tree in trees)
        ids = torch.full((len(trees), width), pad_id, dtype=torch.long)
        depth = torch.zeros(len(trees), width, dtype=torch.long)
        for row, tree in enumerate(trees):
            ids[row, : len(tree)] = torch.tensor(tree.tokens)
            depth[row, : len(tree)] = torch.tensor(tree.depth)
        tree_of = [row for row, tree in enumerate(trees) for _ in tree.paths]
        node_of = [path[-1] for tree in trees for path in tree.paths]
        yield _Batch(
            [index for members in groups.values() for index in members],
            ids.to(device),
            torch.stack([tree.sees(width) for tree in trees])[:, None].to(device),
            depth.to(device),
            (torch.tensor(tree_of, device=device), torch.tensor(node_of, device=device)),
        )


def gather_last_position(
    model: TransformerBridge,
    token_lists: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    site: Site = "z",
    batch_size: int = 16,
    progress: bool | tqdm = True,
    shared: SharedPrefix | None = None,
) -> dict[int, Tensor]:
    """``{layer: activations at each prompt's last token}`` in prompt order (float32).

    Prompts run ``batch_size`` at a time as token trees (each distinct beginning once,
    nothing padded but the trees to one width); the forward pass stops right after the
    last layer's hook fires. With ``shared`` (a prefix every prompt begins with, run
    once) only each prompt's own tokens are run.
    """
    if shared is not None and not all(shared.starts(ids) for ids in token_lists):
        raise ValueError("every prompt must begin with the shared prefix")
    skip = len(shared.ids) if shared is not None else 0
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = model_device(model)
    store: dict[int, Tensor] = {}
    current: list[_Batch] = []

    def last_token(activation: Tensor) -> Tensor:  # each layer on its device (split models)
        tree, node = current[0].at
        return activation[tree.to(activation.device), node.to(activation.device)]

    captured: dict[int, Tensor] = {}
    hooks = capture(layers, captured, site=site, select=last_token, stop_after_last=True)
    bar = (
        progress
        if isinstance(progress, tqdm)
        else tqdm(total=len(token_lists), desc="activations", unit="prompt", disable=not progress)
    )
    batches = _batches(
        [ids[skip:] for ids in token_lists], batch_size, pad_id=pad_token_id(model), device=device
    )
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        for batch in batches:
            current[:] = [batch]
            mask, past = batch.sees, None
            if shared is not None:
                trees, width = batch.ids.shape
                front = torch.ones(trees, 1, width, skip, dtype=torch.bool, device=device)
                mask, past = torch.cat([front, mask], dim=-1), shared.cache(trees)
            try:
                forward(
                    model, batch.ids, mask, past_key_values=past, position_ids=skip + batch.depth
                )
            except StopForward:
                pass
            for layer, picked in captured.items():
                if layer not in store:
                    store[layer] = torch.empty((len(token_lists), *picked.shape[1:]))
                store[layer][batch.rows] = picked.float().cpu()
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
    prepend_bos: bool | None = None,
    template: str | None = None,
    out_dir: str | Path | None = None,
    chunk_size: int = 2048,
    progress: bool = True,
    shared: SharedPrefix | None = None,
) -> HeadActivations:
    """``hook_z`` of every head (of ``layers``) at each prompt's last real token.

    Args:
        prompts: texts, or :class:`LabelledPrompt` (then labels and groups are kept).
        position: only ``"last"``, the last real token of each prompt.
        batch_size: prompts per forward pass (consecutive ones: keep prompts that begin
            alike together).
        layers: layers to collect (default all); later layers are never computed.
        prepend_bos: override the model's BOS rule (see :mod:`fasb_lens.models`).
        template: the prompt template, recorded with the activations.
        out_dir: stream to this folder in chunks of ``chunk_size`` prompts; chunks already
            there from an interrupted run with the same prompts are not recomputed.
        shared: a prefix every prompt begins with, run once (see :mod:`fasb_lens.prefix`).
    """
    return _collect(model, prompts, HeadActivations, **_options(locals()))


def collect_residual_activations(
    model: TransformerBridge, prompts: Sequence[str | LabelledPrompt], **options: Any
) -> ResidualActivations:
    """The residual stream after each block (``hook_resid_post``) at each last token.

    Takes the keyword arguments of :func:`collect_head_activations`; the CAA baseline's
    vector comes from these (see :class:`ResidualActivations`).
    """
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(collect_head_activations).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"unexpected argument(s) {unknown}")
    return _collect(model, prompts, ResidualActivations, **{**defaults, **options})


def _options(arguments: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in arguments.items() if key not in ("model", "prompts")}


def _collect(
    model: TransformerBridge,
    prompts: Sequence[str | LabelledPrompt],
    kind: type[Activations],
    *,
    position: Position,
    batch_size: int,
    layers: Sequence[int] | None,
    prepend_bos: bool | None,
    template: str | None,
    out_dir: str | Path | None,
    chunk_size: int,
    progress: bool,
    shared: SharedPrefix | None,
) -> Any:
    if position != "last":
        raise ValueError(f"position must be 'last', got {position!r}")
    texts, labels, groups = _as_prompts(prompts)
    hook_template = kind.SITE
    shape = site_shape(model, hook_template)
    info = ActivationInfo(
        model_id=model_id(model),
        shape=shape,
        layers=_check_layers(layers, shape),
        hook_name=hook_template,
        position=position,
        template=template,
        prepend_bos=bool(model.cfg.default_prepend_bos) if prepend_bos is None else prepend_bos,
        versions=storage.library_versions(),
    )
    token_lists = tokenize(model, texts, prepend_bos=prepend_bos)
    layers = list(info.layers)

    def run(rows: range, bar: bool | tqdm) -> Tensor:
        gathered = gather_last_position(
            model,
            [token_lists[i] for i in rows],
            layers,
            site=SITES[hook_template],
            batch_size=batch_size,
            progress=bar,
            shared=shared,
        )
        z = torch.stack([gathered[layer] for layer in layers], dim=1)
        return z.reshape(len(rows), len(layers), shape.n_heads, shape.d_head)

    if out_dir is None:
        z = run(range(len(texts)), progress)
        return kind(z=z, prompts=texts, info=info, labels=labels, groups=groups)
    manifest = {
        **new_manifest(info, texts, groups, has_labels=labels is not None),
        "fingerprint": _fingerprint(texts, info),
    }
    _collect_streaming(Path(out_dir), manifest, labels, run, chunk_size, batch_size, progress)
    return kind.load(out_dir)


def _fingerprint(texts: Sequence[str], info: ActivationInfo) -> str:
    """A hash of the prompts and settings, so a resumed run never mixes two collections."""
    digest = hashlib.sha256()
    settings = {key: value for key, value in info.to_dict().items() if key != "versions"}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


_SHARD = re.compile(
    re.escape(storage.ACTIVATIONS_SHARD)
    .replace(re.escape("{start:08d}"), r"(\d{8})")
    .replace(re.escape("{stop:08d}"), r"(\d{8})")
)


def _held_shards(folder: Path, manifest: dict[str, Any]) -> list[tuple[int, int, str]]:
    """The shards of this collection in ``folder`` as ``(start, stop, name)``, by start,
    none overlapping another: those a manifest of the same prompts lists, and those written
    since by processes killed before a manifest named them (without a manifest, none)."""
    if not (folder / storage.ACTIVATIONS_MANIFEST).is_file():
        return []
    previous = read_manifest(folder)
    if previous.get("fingerprint") != manifest["fingerprint"]:
        raise ValueError(
            f"{folder} holds activations of other prompts or settings; "
            "choose another folder or delete it"
        )
    names = dict.fromkeys(previous["shards"])
    names.update(dict.fromkeys(sorted(path.name for path in folder.iterdir())))
    found = []
    for name in names:
        match = _SHARD.fullmatch(name)
        if match and (folder / name).is_file():
            start, stop = int(match[1]), int(match[2])
            if 0 <= start < stop <= manifest["n"]:
                found.append((start, stop, name))
    held, end = [], 0
    for start, stop, name in sorted(found):
        if start >= end:
            held.append((start, stop, name))
            end = stop
    return held


def _pending_pieces(
    n: int,
    held: list[tuple[int, int, str]],
    chunk_size: int,
    batch_size: int,
    pieces_per_chunk: int,
) -> list[tuple[int, int]]:
    """The rows still to collect as ``(start, stop)`` pieces: each ``chunk_size`` chunk's
    rows no held shard covers, cut into up to ``pieces_per_chunk`` pieces at multiples of
    ``batch_size`` from the chunk's start. A piece's batches are thus exactly the batches a
    single process runs on that chunk (held shards begin and end on such boundaries)."""
    covered = [False] * n
    for start, stop, _ in held:
        covered[start:stop] = [True] * (stop - start)
    pieces = []
    for chunk in range(0, n, chunk_size):
        end = min(chunk + chunk_size, n)
        row = chunk
        while row < end:
            if covered[row]:
                row += 1
                continue
            stop = row
            while stop < end and not covered[stop]:
                stop += 1
            batches = -(-(stop - row) // batch_size)
            per_piece = -(-batches // max(1, pieces_per_chunk)) * batch_size
            pieces += [(a, min(a + per_piece, stop)) for a in range(row, stop, per_piece)]
            row = stop
    return pieces


def _collect_streaming(
    folder: Path,
    manifest: dict[str, Any],
    labels: Tensor | None,
    run: Callable[[range, bool | tqdm], Tensor],
    chunk_size: int,
    batch_size: int,
    progress: bool,
) -> None:
    """Collect chunk by chunk into ``folder``, resuming from the shards already there.

    One process writes the manifest after every shard. Several processes (under
    ``torchrun``) each collect their share of the pieces; the main process writes the
    manifest first (its fingerprint guards the shards written next) and last."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    folder.mkdir(parents=True, exist_ok=True)
    n = manifest["n"]
    with distributed.main_first():
        held = _held_shards(folder, manifest)
        if distributed.is_main() and distributed.world_size() > 1:
            names = [name for _, _, name in held]
            storage.write_json(folder / storage.ACTIVATIONS_MANIFEST, {**manifest, "shards": names})
    shards = [name for _, _, name in held]
    pieces = _pending_pieces(n, held, chunk_size, batch_size, distributed.world_size())
    done = sum(stop - start for start, stop, _ in held)
    bar = tqdm(total=n, initial=done, desc="activations", unit="prompt", disable=not progress)
    for start, stop in distributed.share(pieces):
        z = run(range(start, stop), bar)
        shards.append(
            write_shard(folder, start, stop, z, None if labels is None else labels[start:stop])
        )
        if distributed.world_size() == 1:
            storage.write_json(
                folder / storage.ACTIVATIONS_MANIFEST, {**manifest, "shards": shards}
            )
    bar.close()
    distributed.barrier()
    if distributed.is_main():
        if distributed.world_size() > 1:
            held = _held_shards(folder, manifest)
            if sum(stop - start for start, stop, _ in held) != n:
                raise storage.ArtifactError(
                    f"{folder}: the processes' shards do not cover {n} rows"
                )
            shards = [name for _, _, name in held]
        storage.write_json(
            folder / storage.ACTIVATIONS_MANIFEST, {**manifest, "shards": shards, "complete": True}
        )
    distributed.barrier()
