"""Running a model: forward calls (with a padding mask, a KV cache, or from a given
block on) and the unembedding at chosen positions; the KV cache itself is
:mod:`fasb_lens.models.kv_cache`, log-probabilities :mod:`fasb_lens.logprobs`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import AttentionMask, TokenIds
from fasb_lens.models.attention import fast_attention
from fasb_lens.models.kv_cache import KVCache
from fasb_lens.models.shape import model_id
from fasb_lens.profiling import count_forward


def forward(
    model: TransformerBridge,
    ids: TokenIds | Tensor,
    attention_mask: AttentionMask | None = None,
    *,
    past_key_values: Any = None,
    use_cache: bool = False,
    start_at_layer: int | None = None,
    position_ids: Int[Tensor, "batch pos"] | None = None,
) -> Any:
    """One forward pass; returns logits, or ``(logits, cache)`` when a cache is used.

    With ``use_cache=True`` (or a ``past_key_values`` from an earlier call) the model
    returns a :class:`~fasb_lens.models.KVCache` (or extends the cache passed); pass it
    back with the next tokens and an attention mask covering the cached and the new
    positions. With ``start_at_layer``,
    ``ids`` is the residual stream entering that block (``[batch, pos, d_model]``) and
    the blocks below it are not run at all (see :func:`blocks_from`). ``attention_mask``
    may also be a ``[batch, 1, pos, past + pos]`` boolean mask saying which positions each
    token sees (a tree of sequences in one row); ``position_ids`` then give each token's
    position, which the bridge otherwise derives from a ``[batch, past + pos]`` mask.
    """
    kwargs: dict[str, Any] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    padding = attention_mask is not None and attention_mask.ndim == 2
    if position_ids is None and start_at_layer is not None and padding:
        # the bridge derives positions from the mask only for token ids; a residual input
        # gets the same ones here, so left padding shifts nothing
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1] :]
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if start_at_layer is not None:
        with blocks_from(model, start_at_layer):
            return _forward(model, ids, kwargs, past_key_values, use_cache, start_at_layer)
    return _forward(model, ids, kwargs, past_key_values, use_cache, None)


def _forward(
    model: TransformerBridge,
    ids: Tensor,
    kwargs: dict[str, Any],
    past_key_values: Any,
    use_cache: bool,
    start_at_layer: int | None,
) -> Any:
    if start_at_layer is not None:
        kwargs["start_at_layer"] = start_at_layer
    if past_key_values is None and use_cache:
        past_key_values = KVCache()
    if past_key_values is not None:
        kwargs |= {
            "return_type": "logits_and_cache",
            "use_cache": True,
            "past_key_values": past_key_values,
        }
    count_forward(ids.shape[0] * ids.shape[1])
    with fast_attention(model):
        return model(ids, **kwargs)


@contextmanager
def blocks_from(model: TransformerBridge, layer: int) -> Iterator[None]:
    """Inside the block, the wrapped HuggingFace model holds only blocks ``layer`` onwards.

    TransformerLens' ``start_at_layer`` feeds a residual stream into block ``layer`` but
    still runs (and discards) the blocks below it; with them removed from the stack for
    the duration of the call, they cost nothing. Hook names are unchanged: each block
    keeps its own hook points and its attention its layer index (for the KV cache).
    """
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} is not in 0..{model.cfg.n_layers - 1}")
    first = model.blocks[0]
    root = model.original_model
    for name, module in root.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and module[0] is first:
            parent_name, _, attribute = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            break
    else:
        raise NotImplementedError(f"{model_id(model)}: the block stack was not found")
    stack = getattr(parent, attribute)
    setattr(parent, attribute, torch.nn.ModuleList(list(stack)[layer:]))
    try:
        yield
    finally:
        setattr(parent, attribute, stack)


def unembed(
    model: TransformerBridge, final: Float[Tensor, "n d_model"]
) -> Float[Tensor, "n d_vocab"]:
    """Logits from final residual streams (captured at :data:`HOOK_FINAL`), so that
    the unembedding runs only at the positions a caller needs.

    A bias that is all zeros (TransformerLens gives a bias-free head a zero ``b_U``) is
    not added: over a 49k-token vocabulary that addition costs as much as the log-softmax.
    """
    logits = final @ model.unembed.W_U
    bias = getattr(model.unembed, "b_U", None)
    return logits + bias if bias is not None and bool(bias.any()) else logits
