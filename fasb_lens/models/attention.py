"""Attention as the bridge computes it, without its two costly steps on a CPU.

TransformerLens' bridge computes a rotary model's attention step by step, so that every
hook fires where it should: it repeats each key/value head once per query head of its
group (grouped-query attention; SmolLM2 has 9 query heads and 3 key/value heads), a copy
of the whole KV cache in every layer at every forward, then materialises the scores and
the pattern of every head over every key, and masks, scales and softmaxes them one
elementwise pass at a time. With a few hundred prompt tokens in the cache those steps are
most of a forward.

Inside :func:`fast_attention`, each covered layer computes the same attention in one of
two ways:

* in float32, while gradients are recorded, or when a hook is attached to
  ``hook_attn_scores`` or ``hook_pattern`` (to read or edit them): step by step as the
  bridge does, but with each group's query heads stacked along
  the query axis, so that they meet their key/value head in one matrix product and nothing
  is copied: the hooks see ``[batch, n_heads, query, key]`` tensors as before and their
  edits act as before;
* otherwise (bfloat16 or float16 inference) with PyTorch's fused
  ``scaled_dot_product_attention``, which reads the key/value heads in place and never
  materialises the pattern; it keeps the pattern in float32 where the bridge rounds it to
  the model's dtype, so its results are at least as close to a float32 run.

Every other hook fires as before (``hook_q``, ``hook_k``, ``hook_v``, the rotary hooks,
``hook_z``, ``hook_out``). Layers this does not cover (another architecture, a
subclass with its own forward, query/key norms, soft-capping, partial rotary and so on)
keep the bridge's own computation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
    PositionEmbeddingsAttentionBridge as _Attention,
)
from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

_CONFIG_FLAGS = (
    "use_split_qkv_input",
    "use_attn_in",
    "use_attn_result",
    "gated_q_proj",
    "rotary_interleaved_cos_sin",
    "rotary_adjacent_pairs",
    "qk_norm_after_rope",
)
"""Bridge configuration flags under which the bridge's own computation is kept."""
FUSED_DTYPES = (torch.bfloat16, torch.float16)
"""Dtypes computed with the fused kernel when nothing watches the pattern. In float32 the
kernel's order of summation would move results by about 1e-6, which per-head studies of
small effects can see, so float32 keeps the bridge's steps (grouped)."""
_MODULE_FEATURES = ("key_multiplier", "attn_logit_softcapping", "sinks")
"""Attributes of the wrapped attention module under which the same holds."""


def _groups(attention: Any) -> int:
    """Query heads per key/value head (1 without grouping) when :func:`fast_attention`
    covers this layer, else 0."""
    if not isinstance(attention, _Attention) or type(attention).forward is not _Attention.forward:
        return 0
    if type(attention)._pre_output_projection is not _Attention._pre_output_projection:
        return 0
    module, config = attention.original_component, attention.config
    if module is None or any(getattr(config, flag, False) for flag in _CONFIG_FLAGS):
        return 0
    if any(getattr(module, name, None) is not None for name in _MODULE_FEATURES):
        return 0
    module_config = getattr(module, "config", None)
    if getattr(module_config, "clip_qkv", None) is not None:
        return 0
    rope = getattr(module_config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        return 0
    if any(name in attention.submodules for name in ("q_norm", "k_norm", "gate")):
        return 0
    if get_rotary_pct_from_config(config) != 1.0:
        return 0
    return max(1, int(getattr(module, "num_key_value_groups", 1)))


def _watched(*points: Any) -> bool:
    """Whether a hook is attached to any of these hook points (or to every module)."""
    everywhere = torch.nn.modules.module
    if everywhere._global_forward_hooks or everywhere._global_forward_pre_hooks:
        return True
    return any(point._forward_hooks or point._forward_pre_hooks for point in points)


def _stepwise(
    attention: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Any,
    scaling: float,
    groups: int,
) -> tuple[Tensor, Tensor]:
    """Scores, mask, ``hook_attn_scores``, softmax, ``hook_pattern`` and the mix of values,
    as the bridge computes them, each group's query heads stacked along the query axis:
    ``[batch, n_heads, query, d_head]`` and the pattern."""
    rows, n_heads, length, head_dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    stacked = (rows, kv_heads, groups * length, -1)  # a group's query heads, one after another
    if length == 1:
        # one new token against a cache that grows in place: the keys are read row by
        # row where they lie (the other order would copy them first)
        scores = torch.matmul(key, query.reshape(stacked).transpose(-2, -1)).transpose(-2, -1)
    else:
        scores = torch.matmul(query.reshape(stacked), key.transpose(-2, -1))
    scores = scores.reshape(rows, n_heads, length, width) * scaling
    scores = attention._apply_reconstruct_attention_mask(
        attn_scores=scores, attention_mask=mask, seq_len=width, q_seq_len=length
    )
    scores = attention.hook_attn_scores(scores)
    pattern = attention._masked_softmax(scores, dtype=torch.float32).to(query.dtype)
    pattern = attention._scrub_compatibility_pattern_nans(pattern)
    pattern = attention.hook_pattern(pattern)
    mixed = torch.matmul(pattern.reshape(stacked), value)
    return mixed.view(rows, n_heads, length, head_dim), pattern


def _forward(
    attention: Any, groups: int, *args: Any, **kwargs: Any
) -> tuple[Tensor, Tensor | None]:
    """The bridge's attention, stepwise or fused (module docstring); any call outside
    the covered case goes to the bridge's own forward."""
    module = attention.original_component
    head_dim = module.head_dim
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    rotary = kwargs.get("position_embeddings")
    if (
        attention.training
        or not isinstance(hidden, Tensor)
        or not isinstance(rotary, tuple)
        or rotary[0].shape[-1] != head_dim
    ):
        return _Attention.forward(attention, *args, **kwargs)
    kwargs = {
        key: value
        for key, value in kwargs.items()
        if key not in ("hidden_states", "position_embeddings")
    }
    mask = kwargs.pop("attention_mask", None)

    hidden = attention.hook_in(hidden)
    rows, length = hidden.shape[:2]
    heads = (rows, length, -1, head_dim)
    query = attention.q(hidden).view(heads).transpose(1, 2)
    key = attention.k(hidden).view(heads).transpose(1, 2)
    value = attention.v(hidden).view(heads).transpose(1, 2)
    cos, sin = attention._apply_position_embedding_hooks(rotary)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if hasattr(attention, "hook_rot_q"):
        query = attention.hook_rot_q(query)
    if hasattr(attention, "hook_rot_k"):
        key = attention.hook_rot_k(key)
    key, value = attention._update_kv_cache(key, value, **kwargs)

    scaling = getattr(module, "scaling", head_dim**-0.5)
    if (
        query.dtype not in FUSED_DTYPES
        or torch.is_grad_enabled()
        or attention.compatibility_mode
        or _watched(attention.hook_attn_scores, attention.hook_pattern)
    ):
        mixed, pattern = _stepwise(attention, query, key, value, mask, scaling, groups)
    else:
        bias = attention._apply_reconstruct_attention_mask(
            attn_scores=query.new_zeros(rows, 1, length, key.shape[2]),
            attention_mask=mask,
            seq_len=key.shape[2],
            q_seq_len=length,
        )
        mixed = F.scaled_dot_product_attention(
            query, key, value, attn_mask=bias, scale=scaling, enable_gqa=True
        )
        pattern = None
    mixed = attention._pre_output_projection(mixed.transpose(1, 2).reshape(rows, length, -1))
    weight = getattr(attention.o.original_component, "weight", None)
    if isinstance(weight, Tensor) and weight.dtype.is_floating_point:
        mixed = mixed.to(weight.dtype)
    return attention.hook_out(attention.o(mixed)), pattern


_bridge_only = [0]  # how many bridge_attention blocks are open


@contextmanager
def bridge_attention() -> Iterator[None]:
    """Inside the block, :func:`fast_attention` changes nothing: every fasb_lens forward
    runs the bridge's own attention (to compare with it, or to rule the fast one out)."""
    _bridge_only[0] += 1
    try:
        yield
    finally:
        _bridge_only[0] -= 1


@contextmanager
def fast_attention(model: TransformerBridge) -> Iterator[int]:
    """Inside the block, the model's rotary attention layers compute as the module
    docstring says; yields how many layers that covers (0 for a model without them, such
    as GPT-2, or inside :func:`bridge_attention`: nothing changes)."""
    covered = []
    for block in model.blocks if not _bridge_only[0] else ():
        attention = getattr(block, "attn", None)
        groups = _groups(attention)
        if groups and "forward" not in vars(attention):
            # on the bridge itself (its own setattr would pass the name on to the wrapped
            # module)
            object.__setattr__(attention, "forward", partial(_forward, attention, groups))
            covered.append(attention)
    try:
        yield len(covered)
    finally:
        for attention in covered:
            object.__delattr__(attention, "forward")
