"""Per-head ablation studies: knock out (or steer) one head at a time and measure.

An ablation replaces a head's output before ``W_O`` (``hook_z``) at every position: by
zero (*zero ablation*) or by its mean activation over a reference set (*mean ablation*,
which keeps the head's average contribution and removes only what varies). Steering one
head at a time adds that head's steering vector instead. The change in a metric, head by
head, is a ``[layer, head]`` grid that shows which heads the behaviour depends on.

Metrics (each a callable ``model -> float``):

* :func:`logprob_margin` - mean log-probability of true answers minus false ones, on the
  short probing prompts (``"Q: ... A:"``), all answers in one batch: cheap;
* :func:`mc2_metric` - TruthfulQA's MC2 on a subset of questions, with the full prompt;
* :func:`probe_accuracy_metric` - the accuracy of fixed probes of later heads: does
  knocking out a head destroy the truthfulness signal downstream?

Grids are computed head by head, written as they come (``ablation.jsonl``) so an
interrupted study resumes, with a progress bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens._types import Head, HeadGrid
from fasb_lens.activations import collect_head_activations
from fasb_lens.data import LabelledPrompt, PromptFormat, TruthfulQAQuestion
from fasb_lens.evaluation.truthfulqa import AnswerSource, evaluate_mc
from fasb_lens.interventions import hooked, replace_heads
from fasb_lens.models import model_shape
from fasb_lens.policies import Unsteered
from fasb_lens.probes import HeadProbes
from fasb_lens.scoring import continuation_log_probs
from fasb_lens.steering import Steering

AblationKind = Literal["zero", "mean", "steer"]
"""What is done to each head: zeroed, replaced by its mean, or steered."""
Metric = Callable[[TransformerBridge], float]


@contextmanager
def ablated(
    model: TransformerBridge,
    heads: Sequence[Head],
    *,
    mode: Literal["zero", "mean"] = "zero",
    means: Tensor | None = None,
) -> Iterator[TransformerBridge]:
    """Replace ``heads``' ``hook_z`` at every position inside the ``with`` block.

    ``means`` is ``[n_layers, n_heads, d_head]`` (e.g. ``activations.z.mean(0)``), needed
    for mean ablation.
    """
    if mode == "mean" and means is None:
        raise ValueError("mean ablation needs the heads' mean activations (means=...)")
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    shape = model_shape(model)
    for head in heads:
        shape.check_head(head)
    values = None
    if mode == "mean":
        assert means is not None
        values = {head: means[head.layer, head.head] for head in heads}
    with hooked(model, replace_heads(heads, values)):
        yield model


# --------------------------------------------------------------------------- metrics


def logprob_margin(questions: Sequence[TruthfulQAQuestion], *, batch_size: int = 64) -> Metric:
    """Mean over questions of (mean log p(true answer) - mean log p(false answer)).

    Prompts are ``"Q: {question} A:"`` followed by ``" {answer}"``.
    """
    pairs, owners = [], []
    for index, question in enumerate(questions):
        for label, answers in ((1, question.correct_answers), (0, question.incorrect_answers)):
            for answer in answers:
                pairs.append((f"Q: {question.question} A:", f" {answer}"))
                owners.append((index, label))

    def metric(model: TransformerBridge) -> float:
        scores = continuation_log_probs(model, pairs, batch_size=batch_size)
        margins = []
        for index in range(len(questions)):
            true = [s for s, (i, lab) in zip(scores, owners, strict=True) if i == index and lab]
            false = [
                s for s, (i, lab) in zip(scores, owners, strict=True) if i == index and not lab
            ]
            margins.append(sum(true) / len(true) - sum(false) / len(false))
        return sum(margins) / len(margins)

    return metric


def mc2_metric(
    questions: Sequence[TruthfulQAQuestion], *, fmt: PromptFormat, source: AnswerSource = "csv"
) -> Metric:
    """TruthfulQA's MC2 averaged over ``questions`` (unsteered)."""

    def metric(model: TransformerBridge) -> float:
        values = [
            evaluate_mc(model, q, {"none": Unsteered()}, fmt=fmt, source=source)["none"]["mc2"]
            for q in questions
        ]
        return sum(values) / len(values)

    return metric


def probe_accuracy_metric(
    prompts: Sequence[LabelledPrompt], probes: HeadProbes, heads: Sequence[Head]
) -> Metric:
    """Mean accuracy of the fixed probes of ``heads`` on ``prompts`` (re-collected)."""
    labels = torch.tensor([p.label for p in prompts])
    layers = sorted({head.layer for head in heads})

    def metric(model: TransformerBridge) -> float:
        acts = collect_head_activations(model, prompts, layers=layers, progress=False)
        z = acts.heads(heads)
        weight, bias = probes.params(heads)
        predictions = ((z * weight).sum(-1) + bias) > 0
        return float((predictions == labels[:, None].bool()).float().mean())

    return metric


# --------------------------------------------------------------------------- studies


@dataclass
class AblationResult:
    """The metric's change per head (``effect = value - baseline``), NaN where not run."""

    effect: HeadGrid
    baseline: float
    metric: str
    mode: str

    def top(self, k: int = 10, *, largest_drop: bool = True) -> list[tuple[Head, float]]:
        """The heads whose ablation moved the metric most (most negative first)."""
        flat = self.effect.flatten()
        n_heads = self.effect.shape[1]
        valid = [i for i in range(len(flat)) if not math.isnan(float(flat[i]))]
        valid.sort(key=lambda i: float(flat[i]), reverse=not largest_drop)
        return [(Head(*divmod(i, n_heads)), float(flat[i])) for i in valid[:k]]


def ablation_study(
    model: TransformerBridge,
    metric: Metric,
    *,
    heads: Sequence[Head] | None = None,
    mode: AblationKind = "zero",
    means: Tensor | None = None,
    steering: Steering | None = None,
    strength: float = 5.0,
    metric_name: str = "metric",
    out: str | Path | None = None,
    progress: bool = True,
) -> AblationResult:
    """Ablate (or steer) each head alone and record the change in ``metric``.

    Args:
        heads: heads to study (default: every head).
        mode: ``"zero"``, ``"mean"`` (needs ``means``) or ``"steer"`` (adds ``strength``
            times the head's vector from ``steering``, which must hold every studied head).
        out: folder for ``ablation.jsonl``; values already there are not recomputed.
    """
    shape = model_shape(model)
    heads = list(heads) if heads is not None else shape.heads
    if mode == "steer":
        if steering is None:
            raise ValueError("mode 'steer' needs a steering holding the studied heads")
        missing = [str(h) for h in heads if h not in steering.heads]
        if missing:
            raise ValueError(f"the steering has no vector for {', '.join(missing[:5])}")
    log = (
        storage.JsonlLog(
            Path(out) / storage.ABLATION_LOG,
            key=lambda record: (record["metric"], record["mode"], record["key"]),
        )
        if out is not None
        else None
    )
    done: dict[str, float] = {}
    if log is not None:
        for record in log.values():
            if record.get("metric") == metric_name and record.get("mode") == mode:
                done[record["key"]] = record["value"]

    def remember(key: str, value: float) -> None:
        done[key] = value
        if log is not None:
            log.append({"key": key, "value": value, "metric": metric_name, "mode": mode})

    if "baseline" not in done:
        remember("baseline", metric(model))
    baseline = done["baseline"]
    effect = torch.full((shape.n_layers, shape.n_heads), float("nan"))
    for head in tqdm(heads, desc=f"ablation ({mode})", unit="head", disable=not progress):
        key = str(head)
        if key not in done:
            if mode == "steer":
                assert steering is not None
                with steering.subset([head]).apply(model, strength, positions="all"):
                    remember(key, metric(model))
            else:
                with ablated(model, [head], mode=mode, means=means):  # type: ignore[arg-type]
                    remember(key, metric(model))
        effect[head.layer, head.head] = done[key] - baseline
    return AblationResult(effect, baseline, metric_name, mode)
