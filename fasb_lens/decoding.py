"""How the token loop runs the model: the decoders of :mod:`fasb_lens.generation`.

A decoder feeds every row of a batch its next input and returns the logits at each row's
newest position; on a backtrack it forgets a row's dropped tokens. Two exist:

* :class:`CachedDecoder` keeps a KV cache over physical columns: a row's discarded
  positions are masked out, and cropped from the cache when they are at its end for every
  row; positions generated with steering keep their steered keys and values;
* :class:`ReferenceDecoder` is the authors' loop: the whole sequence, every step, no cache.

A row is any object with ``prompt_ids``, ``tokens`` (the generated tokens kept so far) and
``done``. :class:`PromptCache` runs every prompt of a batch but its last token once, so
several policies can start from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.models import (
    copy_cache,
    crop_cache,
    forward,
    model_device,
    pad,
    pad_token_id,
    select_rows,
    tokenize,
)
from fasb_lens.prefix import SharedPrefix, prefill


class Decoder:
    """Runs one step of the model for every row; cached and reference variants."""

    def __init__(self, model: TransformerBridge, rows: list[Any]) -> None:
        self.model = model
        self.rows = rows
        self.pad_id = pad_token_id(model)
        self.device = model_device(model)
        self.active: list[int] = list(range(len(rows)))
        """The rows still in the batch, in batch order; :meth:`compact` drops finished ones."""

    def prepare(self) -> None:
        """Work done once before decoding, outside the hooks."""

    def step(self) -> Tensor:
        """Feed each active row's next input; return the logits at each one's last position
        (in the order of :attr:`active`)."""
        raise NotImplementedError

    def compaction_due(self) -> bool:
        """Whether enough rows have finished (a quarter of the batch or more) that the
        batch should shrink: finished rows would otherwise still be computed every step."""
        done = sum(self.rows[i].done for i in self.active)
        return done > 0 and 4 * done >= len(self.active)

    def compact(self) -> None:
        """Drop finished rows from the batch."""
        self.active = [i for i in self.active if not self.rows[i].done]

    def backtrack(self, index: int, n_keep: int) -> None:
        """Row ``index`` keeps its first ``n_keep`` tokens; the last kept one is re-fed."""
        raise NotImplementedError


class ReferenceDecoder(Decoder):
    """The authors' loop: the whole sequence, every step, no cache."""

    def step(self) -> Tensor:
        sequences = [self.rows[i].prompt_ids + self.rows[i].tokens for i in self.active]
        ids, mask = pad(sequences, pad_id=self.pad_id, side="left", device=self.device)
        return forward(self.model, ids, mask)[:, -1]

    def backtrack(self, index: int, n_keep: int) -> None:
        del self.rows[index].tokens[n_keep:]


@dataclass
class PromptCache:
    """Every prompt of a batch but its last token, run once, to start several runs from.

    Decoding under any policy starts by feeding each prompt's last token (where steering
    may already apply); the rest of the prompt is the same work whatever the policy.
    ``generate(..., prompt_cache=cache)`` starts from a copy instead of recomputing it,
    which saves a prompt's worth of compute per policy when comparing policies; with a
    :class:`SharedPrefix` the prompts' common beginning is not recomputed either.
    """

    prompt_ids: list[list[int]]
    mask: Tensor  # [batch, columns]: the shared prefix, then each prompt left padded
    cache: Any  # a KVCache; None when every prompt is a single token

    @classmethod
    def build(
        cls,
        model: TransformerBridge,
        prompts: Sequence[str],
        *,
        prepend_bos: bool | None = None,
        shared: SharedPrefix | None = None,
    ) -> PromptCache:
        prompt_ids = tokenize(model, list(prompts), prepend_bos=prepend_bos)
        return cls.from_ids(model, prompt_ids, shared=shared)

    @classmethod
    def from_ids(
        cls,
        model: TransformerBridge,
        prompt_ids: list[list[int]],
        *,
        shared: SharedPrefix | None = None,
    ) -> PromptCache:
        device = model_device(model)
        if shared is not None and not all(shared.starts(ids) for ids in prompt_ids):
            shared = None
        skip = len(shared.ids) if shared is not None else 0
        heads = [ids[skip:-1] for ids in prompt_ids]
        if any(heads):
            ids, mask = pad(heads, pad_id=pad_token_id(model), side="left", device=device)
        else:
            ids, mask = None, torch.zeros(len(heads), 0, dtype=torch.long, device=device)
        past = None
        if shared is not None:
            mask, past = shared.extend(mask)
        cache = prefill(model, ids, mask, past) if ids is not None else past
        return cls(prompt_ids, mask, cache)

    def select(self, rows: Sequence[int]) -> PromptCache:
        """The cache of some of its prompts (their left padding may stay wider than they
        need: padding is masked)."""
        index = torch.tensor(list(rows), device=self.mask.device)
        cache = select_rows(self.cache, index) if self.cache is not None else None
        return PromptCache([self.prompt_ids[row] for row in rows], self.mask[index], cache)


class CachedDecoder(Decoder):
    """A KV cache over physical columns; discarded columns are masked out (and cropped
    from the cache when they are at its end for every row)."""

    def __init__(
        self,
        model: TransformerBridge,
        rows: list[Any],
        prompt_cache: PromptCache | None,
        shared: SharedPrefix | None = None,
    ) -> None:
        super().__init__(model, rows)
        self.prompt_cache = prompt_cache
        self.shared = shared
        self.cache: Any = None
        self.mask: Tensor | None = None
        # the physical column of each row's prompt end and generated tokens fed so far
        self.columns: list[list[int]] = []

    def prepare(self) -> None:
        """Start from the prompts but their last tokens: a copy of the shared cache, or
        computed here. Runs before any hook is set: no steering touches these positions."""
        if self.prompt_cache is None:  # this decoder's own: used as it is, not copied
            start = PromptCache.from_ids(
                self.model, [row.prompt_ids for row in self.rows], shared=self.shared
            )
            self.cache, self.mask = start.cache, start.mask
        else:
            self.cache = copy_cache(self.prompt_cache.cache)
            self.mask = self.prompt_cache.mask.clone()
        self.columns = [[] for _ in self.rows]

    def step(self) -> Tensor:
        assert self.mask is not None, "prepare() first"
        column = self.mask.shape[1]
        feed, live = [], []
        for index in self.active:
            row, columns = self.rows[index], self.columns[index]
            if row.done:
                feed.append(self.pad_id)
                live.append(0)
                continue
            feed.append(row.tokens[-1] if row.tokens else row.prompt_ids[-1])
            live.append(1)
            columns.append(column)
        ids = torch.tensor(feed, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, torch.tensor(live, device=self.device)[:, None]], 1)
        logits, self.cache = forward(
            self.model, ids, self.mask, past_key_values=self.cache, use_cache=True
        )
        return logits[:, -1]

    def compact(self) -> None:
        keep = [position for position, i in enumerate(self.active) if not self.rows[i].done]
        if len(keep) < len(self.active) and keep:
            assert self.mask is not None
            chosen = torch.tensor(keep, device=self.device)
            if self.cache is not None:
                self.cache = select_rows(self.cache, chosen)
            self.mask = self.mask[chosen]
        super().compact()
        if keep:
            self._crop_masked_tail()

    def backtrack(self, index: int, n_keep: int) -> None:
        row, columns = self.rows[index], self.columns[index]
        del row.tokens[n_keep:]
        # columns[0] holds the prompt's last token, columns[j + 1] generated token j;
        # every column from the last kept token's on is dropped, as it is fed again.
        position = self.active.index(index)
        for column in columns[n_keep:]:
            self.mask[position, column] = 0
        del columns[n_keep:]
        self._crop_masked_tail()

    def _crop_masked_tail(self) -> None:
        live = self.mask.any(dim=0).tolist()
        tail = 0
        while tail < len(live) and not live[len(live) - 1 - tail]:
            tail += 1
        if tail:
            crop_cache(self.cache, tail)
            self.mask = self.mask[:, : self.mask.shape[1] - tail]
