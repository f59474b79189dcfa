"""Turning text into token ids (the BOS rule, chat templates, the context) and padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import AttentionMask, TokenIds
from fasb_lens.models.shape import model_id

Truncation = Literal["error", "left"]


class PromptTooLongError(ValueError):
    """A prompt does not fit in the model's context window."""


def context_length(model: TransformerBridge) -> int:
    """The longest sequence ``model`` accepts, in tokens."""
    return int(model.cfg.n_ctx)


def tokenize(
    model: TransformerBridge,
    texts: Sequence[str],
    *,
    prepend_bos: bool | None = None,
    truncation: Truncation = "error",
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each text, following the module's BOS rule.

    Args:
        prepend_bos: put the BOS token first; ``None`` follows
            ``model.cfg.default_prepend_bos`` (what ``tokenizer(text)`` does).
        truncation: what to do with a prompt longer than ``max_length``: ``"error"``
            refuses it, ``"left"`` keeps its last tokens (and the BOS, if any).
        max_length: defaults to the model's context length.
    """
    if isinstance(texts, str):
        raise TypeError("tokenize expects a sequence of strings, not one string")
    tokenizer = model.tokenizer
    bos = bool(model.cfg.default_prepend_bos) if prepend_bos is None else prepend_bos
    if bos and tokenizer.bos_token_id is None:
        raise ValueError(f"{model_id(model)}'s tokenizer has no BOS token to prepend")
    limit = max_length or context_length(model)
    encoded = tokenizer(list(texts), add_special_tokens=False).input_ids
    result = []
    for index, ids in enumerate(encoded):
        ids = ([tokenizer.bos_token_id] if bos else []) + list(ids)
        if not ids:
            raise ValueError(f"prompt {index} is empty: nothing to run the model on")
        if len(ids) > limit:
            if truncation == "error":
                raise PromptTooLongError(
                    f"prompt {index} has {len(ids)} tokens but the model accepts {limit}; "
                    f"shorten it or pass truncation='left' to keep its last {limit} tokens"
                )
            ids = ids[:1] + ids[len(ids) - limit + 1 :] if bos else ids[len(ids) - limit :]
        result.append(ids)
    return result


def chat_prompt(model: TransformerBridge, user_message: str, *, system: str | None = None) -> str:
    """``user_message`` wrapped in the model's chat template, ready for the reply.

    Tokenise the result with ``prepend_bos=False``: the template writes its own special
    tokens.
    """
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_id(model)} has no chat template; use the plain QA format")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_message}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def pad_token_id(model: TransformerBridge) -> int:
    """Token used to fill padding positions (never attended to)."""
    tokenizer = model.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def pad(
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    side: Literal["left", "right"] = "right",
    device: torch.device | str | None = None,
) -> tuple[TokenIds, AttentionMask]:
    """Stack token lists of different lengths into ``(ids, attention_mask)``."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(ids) for ids in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        span = slice(width - len(tokens), width) if side == "left" else slice(0, len(tokens))
        ids[row, span] = torch.tensor(tokens, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)
