"""Log-probabilities of target tokens: the one path from a forward's output to scores.

The log-probability of a token under a row of logits is its logit minus the row's
log-sum-exp. :func:`read_log_probs` is the only place that computes it; everything that
scores tokens goes through it:

* :func:`target_log_probs` unembeds only the positions a caller reads (a final residual
  stream, as :func:`~fasb_lens.interventions.final_residual` gives it), a slice at a time,
  each row once however many targets read it: the token trees of multiple-choice scoring
  and of the exact ablation engine are scored this way
  (:meth:`fasb_lens.tree_forward.TreeRows.log_probs`);
* :func:`sequence_log_probs` sums the log-probabilities of a continuation from logits a
  full forward gave;
* :func:`continuation_log_probs` scores ``(prefix, continuation)`` pairs with full padded
  forwards: the plain reference the faster scorers are checked and timed against.

No full log-softmax is ever written: over a 49k-token vocabulary that tensor costs more
than the read itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.models import forward, model_device, pad, pad_token_id, tokenize, unembed

UNEMBED_ROWS = 1024
"""Positions unembedded at a time by :func:`target_log_probs` (a 200 MB slice of logits
for a 49k-token vocabulary, instead of one tensor for every position)."""


def read_log_probs(
    logits: Float[Tensor, "n vocab"],
    targets: Int[Tensor, " m"],
    at: Int[Tensor, " m"],
    *,
    scratch: bool = False,
) -> Float[Tensor, " m"]:
    """``log p(targets[i])`` under the logits of row ``at[i]``, in float32.

    Taken as the target's logit minus the log-sum-exp of its row. With ``scratch`` the
    caller hands over ``logits`` (a float32 tensor nothing else reads): without gradients
    the log-sum-exp then reuses its memory instead of copying a vocabulary-wide tensor.
    Differentiable (attribution patching backpropagates through it).
    """
    logits = logits.float()
    picked = logits[at, targets]
    if scratch and not logits.requires_grad:
        top = logits.amax(-1, keepdim=True)
        norm = logits.sub_(top).exp_().sum(-1).log_() + top[:, 0]
    else:
        norm = logits.logsumexp(-1)
    return picked - norm[at]


def target_log_probs(
    model: TransformerBridge,
    final: Float[Tensor, "n d_model"],
    targets: Int[Tensor, " m"],
    *,
    at: Int[Tensor, " m"] | None = None,
) -> Float[Tensor, " m"]:
    """``log p(targets[i])`` under the logits of ``final[at[i]]`` (``at`` defaults to
    ``i``), in float32: :func:`read_log_probs` over :data:`UNEMBED_ROWS` positions of
    ``final`` at a time, each unembedded once."""
    if at is None:
        at = torch.arange(len(targets), device=targets.device)
    parts, order = [], []
    for start in range(0, final.shape[0], UNEMBED_ROWS):
        logits = unembed(model, final[start : start + UNEMBED_ROWS]).float()
        here = ((at >= start) & (at < start + UNEMBED_ROWS)).nonzero()[:, 0]
        parts.append(read_log_probs(logits, targets[here], at[here] - start, scratch=True))
        order.append(here)
    if not parts:
        return final.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)[torch.cat(order).argsort()]


def sequence_log_probs(
    logits: Float[Tensor, "batch pos vocab"],
    targets: Int[Tensor, "batch pos"],
    mask: Tensor | None = None,
) -> Float[Tensor, " batch"]:
    """Summed log-probability of ``targets`` where ``logits`` predict them.

    ``logits[:, t]`` predicts ``targets[:, t]``; ``mask`` (1 = counted) leaves out
    padding. ``logits`` are left as they are.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    flat = targets.reshape(-1)
    picked = read_log_probs(rows, flat, torch.arange(len(flat), device=flat.device))
    picked = picked.view(targets.shape)
    if mask is not None:
        picked = picked * mask
    return picked.sum(dim=-1)


def continuation_log_probs(
    model: TransformerBridge,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    prepend_bos: bool | None = None,
) -> list[float]:
    """Summed log-probability of each continuation after its prefix, by full forwards.

    The plain way to score ``(prefix, continuation)`` pairs, one right-padded batch at a
    time, logits at every position; :class:`~fasb_lens.scoring.PrefixScorer` gets the same
    numbers faster when prefixes are shared.
    """
    device = model_device(model)
    prefixes = tokenize(model, [prefix for prefix, _ in pairs], prepend_bos=prepend_bos)
    continuations = tokenize(model, [cont for _, cont in pairs], prepend_bos=False)
    totals: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            rows = range(start, min(start + batch_size, len(pairs)))
            sequences = [prefixes[i] + continuations[i] for i in rows]
            ids, mask = pad(sequences, pad_id=pad_token_id(model), side="right", device=device)
            logits = forward(model, ids, mask)
            for row, i in enumerate(rows):
                begin, length = len(prefixes[i]), len(continuations[i])
                span = logits[row : row + 1, begin - 1 : begin - 1 + length]
                targets = torch.tensor([continuations[i]], device=device)
                totals.append(float(sequence_log_probs(span, targets)[0]))
    return totals
