"""Activation patching between paired prompts, on TransformerLens' patching module.

A *clean* prompt (a question with a true answer) and a *corrupted* one (the same
question with a false answer) differ where it matters; copying one head's output from
the clean run into the corrupted run shows how much of the difference that head carries.
The answers differ in length, so heads are patched at each prompt's last token, where the
truth probes read: the corrupted run's last token receives the clean run's last-token
output of that head. The sweep over every head is
:func:`transformer_lens.patching.generic_activation_patch` (per-example values and the
unpatched baseline included); fasb_lens adds the last-token patch and the metric, the
tracker's ``p_true`` at the corrupted last token (or any function of the logits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from unittest import mock

import torch
from torch import Tensor
from transformer_lens import patching as tl_patching
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.patching import generic_activation_patch

from fasb_lens.data import TruthfulQAQuestion
from fasb_lens.decisions import DEFAULT_TRACKER
from fasb_lens.interventions import Hooks, capture, heads_from, hooked
from fasb_lens.models import hook_z_name, model_device, pad, pad_token_id, tokenize
from fasb_lens.steering import Steering


@contextmanager
def _bar(progress: bool) -> Iterator[None]:
    """TransformerLens' patching loop with its progress bar on or silenced."""
    if progress:
        yield
        return
    with mock.patch.object(tl_patching, "tqdm", partial(tl_patching.tqdm, disable=True)):
        yield


LogitMetric = Callable[[Tensor, Tensor], Tensor]
"""``metric(logits [batch, pos, vocab], last [batch]) -> [batch]``."""


def truthfulqa_pairs(questions: Sequence[TruthfulQAQuestion]) -> list[tuple[str, str]]:
    """``("Q: {q} A: {true answer}", "Q: {q} A: {false answer}")`` per question: the
    best answer against the first incorrect one, in the probing prompts' format."""
    return [
        (
            f"Q: {question.question} A: {question.best_answer}",
            f"Q: {question.question} A: {question.incorrect_answers[0]}",
        )
        for question in questions
    ]


@dataclass
class PatchingResult:
    """Per-head results of a patching sweep: ``values[layer, head, example]`` is the metric
    with that head patched, ``clean`` and ``corrupted`` the unpatched runs' ``[example]``."""

    values: Tensor
    clean: Tensor
    corrupted: Tensor

    @property
    def effect(self) -> Tensor:
        """The change the patch makes, averaged over examples: ``[layer, head]``."""
        return (self.values - self.corrupted).mean(-1)

    @property
    def recovered(self) -> Tensor:
        """The fraction of the clean-corrupted gap each patch closes: ``[layer, head]``."""
        gap = (self.clean - self.corrupted).mean()
        return self.effect / gap if abs(float(gap)) > 1e-12 else torch.full_like(self.effect, 0.0)


def _measure(
    metric: str | LogitMetric,
    steering: Steering | None,
    tracker: str,
    state: dict[str, Any],
) -> tuple[Hooks, Callable[[Tensor], Tensor]]:
    """The metric as a function of the logits, and the hooks it needs: for ``"p_true"``,
    the anchored heads' ``hook_z`` at each row's last token (``state["rows"]``,
    ``state["last"]``), with the head patched last (``state["head"]``) set to its patched
    value, which its own hook read before the patch."""
    if callable(metric):
        return [], lambda logits: metric(logits, state["last"])
    if metric != "p_true":
        raise ValueError(f"metric must be 'p_true' or a function of the logits, got {metric!r}")
    if steering is None:
        raise ValueError("the p_true metric needs a steering artifact (its tracker)")
    reader = steering.tracker(tracker)
    store: dict[int, Tensor] = {}
    reads = capture(
        sorted({head.layer for head in reader.heads}),
        store,
        site="w_o_in",
        select=lambda z: z[state["rows"].to(z.device), state["last"].to(z.device)],
    )

    def p_true(logits: Tensor) -> Tensor:
        z = heads_from(store, reader.heads).clone()
        if state["head"] is not None:
            layer, head, value = state["head"]
            for k, read in enumerate(reader.heads):
                if (read.layer, read.head) == (layer, head):
                    z[:, k] = value
        return reader.p_true(z.float())

    return reads, p_true


def patching_effects(
    model: TransformerBridge,
    pairs: Sequence[tuple[str, str]],
    *,
    steering: Steering | None = None,
    metric: str | LogitMetric = "p_true",
    tracker: str = DEFAULT_TRACKER,
    progress: bool = True,
) -> PatchingResult:
    """Patch every head's last-token output from each clean prompt into its corrupted one.

    Args:
        pairs: ``(clean, corrupted)`` prompt texts.
        metric: ``"p_true"`` (the tracker over ``steering``'s anchored heads at the
            corrupted last token) or a function of the patched logits.
        progress: show TransformerLens' bar over the heads (its patching loop always
            draws one; ``False`` silences it for this call).
    """
    if not pairs:
        raise ValueError("no prompt pairs to patch between")
    device = model_device(model)
    pad_id = pad_token_id(model)
    clean_ids, clean_mask = pad(
        tokenize(model, [c for c, _ in pairs]), pad_id=pad_id, device=device
    )
    bad_ids, bad_mask = pad(tokenize(model, [b for _, b in pairs]), pad_id=pad_id, device=device)
    clean_last, bad_last = clean_mask.sum(1) - 1, bad_mask.sum(1) - 1
    rows = torch.arange(len(pairs), device=device)
    # the rows' last tokens in the run being measured, and the head patched last
    state: dict[str, Any] = {"rows": rows, "last": clean_last, "head": None}

    def last_token_patch(corrupted: Tensor, index: Sequence[int], clean: Tensor) -> Tensor:
        head = int(index[1])
        value = clean[rows, clean_last, head]
        corrupted[rows, bad_last, head] = value
        state["head"] = (int(index[0]), head, value)
        return corrupted

    reads, measure = _measure(metric, steering, tracker, state)
    names = {hook_z_name(layer) for layer in range(model.cfg.n_layers)}
    with torch.inference_mode(), hooked(model, reads):
        clean_logits, clean_cache = model.run_with_cache(
            clean_ids, names_filter=lambda name: name in names
        )
        clean_value = measure(clean_logits)
        state["last"] = bad_last
        with _bar(progress):
            result = generic_activation_patch(
                model,
                bad_ids,
                clean_cache,
                measure,
                last_token_patch,
                "z",
                index_axis_names=("layer", "head"),
                reduce="none",
                baseline=True,
            )
    return PatchingResult(result.values.cpu(), clean_value.cpu(), result.baseline.cpu())
