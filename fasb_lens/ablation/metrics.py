"""What a per-head study measures: metrics defined so that every engine can evaluate them.

A metric is data plus a reduction, not just a function, so that the head-by-head loop,
the exact batched engine and attribution patching compute the same number:

* :class:`LogProbMetric` - a number from the summed log-probabilities of continuations
  after shared prefixes (:func:`logprob_margin`, :func:`mc2_metric`);
* :class:`ReadoutMetric` - a number from some heads' ``hook_z`` at each prompt's last
  token (:func:`probe_accuracy_metric`, :func:`p_true_metric`).

Each is also a plain callable ``metric(model) -> float``, evaluated the straightforward
way, which is what the reference loop uses. Reductions work on tensors and, where the
metric is smooth, are differentiable (attribution patching needs that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import Head
from fasb_lens.activations import gather_last_position
from fasb_lens.data import LabelledPrompt, PromptFormat, TruthfulQAQuestion
from fasb_lens.decisions import DEFAULT_TRACKER
from fasb_lens.interventions import heads_from
from fasb_lens.models import tokenize
from fasb_lens.multiple_choice import AnswerSource, answer_sets
from fasb_lens.probes import HeadProbes
from fasb_lens.scoring import PrefixScorer
from fasb_lens.steering import Steering

METRICS = ("logprob_margin", "mc2", "probe_accuracy", "p_true")
"""The metrics the command line offers."""


@dataclass(frozen=True)
class ScoredGroup:
    """Continuations read after one shared prefix (token ids, without BOS for the
    continuations); each continuation's summed log-probability is scored."""

    prefix: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not self.prefix or not self.continuations or not all(self.continuations):
            raise ValueError("a scored group needs a prefix and non-empty continuations")


@dataclass(frozen=True)
class LogProbMetric:
    """A number from the summed log-probabilities of continuations.

    ``reduce`` takes one ``[n_continuations]`` tensor per group (in group order) and
    returns a scalar tensor. ``group_term``, when given, says that the metric is the mean
    over groups of ``group_term(g, values_g)`` (build such a metric with
    :func:`mean_over_groups`): attribution patching then differentiates a few groups at a
    time without a clean pass first.
    """

    name: str
    groups: tuple[ScoredGroup, ...]
    reduce: Callable[[list[Tensor]], Tensor]
    differentiable: bool = True
    group_term: Callable[[int, Tensor], Tensor] | None = None

    def group_log_probs(self, model: TransformerBridge) -> list[Tensor]:
        """Each group's summed log-probabilities, by the prefix-cached scorer."""
        values = []
        for group in self.groups:
            scorer = PrefixScorer(model, "", prefix_ids=list(group.prefix))
            scores = scorer.score_ids([list(ids) for ids in group.continuations])
            values.append(torch.tensor([score.log_prob for score in scores], dtype=torch.float64))
        return values

    def __call__(self, model: TransformerBridge) -> float:
        return float(self.reduce(self.group_log_probs(model)))


@dataclass(frozen=True)
class ReadoutMetric:
    """A number from ``heads``' ``hook_z`` at the last token of each prompt.

    ``reduce`` takes ``[n_prompts, k, d_head]`` (heads in the order of ``heads``) and
    returns a scalar tensor.
    """

    name: str
    prompts: tuple[tuple[int, ...], ...]
    heads: tuple[Head, ...]
    reduce: Callable[[Tensor], Tensor]
    differentiable: bool = True

    @property
    def layers(self) -> list[int]:
        return sorted({head.layer for head in self.heads})

    def __call__(self, model: TransformerBridge) -> float:
        store = gather_last_position(
            model, [list(ids) for ids in self.prompts], self.layers, progress=False
        )
        return float(self.reduce(heads_from(store, self.heads)))


Metric = LogProbMetric | ReadoutMetric


def mean_over_groups(
    name: str, groups: Sequence[ScoredGroup], term: Callable[[int, Tensor], Tensor]
) -> LogProbMetric:
    """The metric that averages ``term(g, values_g)`` over the groups."""

    def reduce(values: list[Tensor]) -> Tensor:
        return torch.stack([term(g, v) for g, v in enumerate(values)]).mean()

    return LogProbMetric(name, tuple(groups), reduce, group_term=term)


# --------------------------------------------------------------------------- builders


def _ids(model: TransformerBridge, texts: Sequence[str], *, prepend_bos: bool | None) -> list:
    return [tuple(ids) for ids in tokenize(model, list(texts), prepend_bos=prepend_bos)]


def logprob_margin(
    model: TransformerBridge, questions: Sequence[TruthfulQAQuestion]
) -> LogProbMetric:
    """Mean over questions of (mean log p(true answer) - mean log p(false answer)).

    Prompts are ``"Q: {question} A:"`` followed by ``" {answer}"``, the reference answers
    of the CSV.
    """
    groups, n_true = [], []
    for question in questions:
        answers = [*question.correct_answers, *question.incorrect_answers]
        prefix = _ids(model, [f"Q: {question.question} A:"], prepend_bos=None)[0]
        continuations = _ids(model, [f" {answer}" for answer in answers], prepend_bos=False)
        groups.append(ScoredGroup(prefix, tuple(continuations)))
        n_true.append(len(question.correct_answers))

    def margin(g: int, values: Tensor) -> Tensor:
        return values[: n_true[g]].mean() - values[n_true[g] :].mean()

    return mean_over_groups("logprob_margin", groups, margin)


def mc2_metric(
    model: TransformerBridge,
    questions: Sequence[TruthfulQAQuestion],
    *,
    fmt: PromptFormat,
    source: AnswerSource = "csv",
) -> LogProbMetric:
    """TruthfulQA's MC2 (the probability mass of the true answers) averaged over
    ``questions``, with the full evaluation prompt."""
    groups, n_true = [], []
    for question in questions:
        true, false = answer_sets(question, source)["mc2"]
        prefix, _ = fmt.answer_prompt(question.question, "")
        continuations = _ids(model, [f" {answer}" for answer in (*true, *false)], prepend_bos=False)
        groups.append(ScoredGroup(_ids(model, [prefix], prepend_bos=None)[0], tuple(continuations)))
        n_true.append(len(true))

    def true_mass(g: int, values: Tensor) -> Tensor:
        return (values[: n_true[g]].logsumexp(0) - values.logsumexp(0)).exp()

    return mean_over_groups("mc2", groups, true_mass)


def _readout_prompts(model: TransformerBridge, prompts: Sequence[LabelledPrompt]) -> tuple:
    return tuple(_ids(model, [p.text for p in prompts], prepend_bos=None))


def probe_accuracy_metric(
    model: TransformerBridge,
    prompts: Sequence[LabelledPrompt],
    probes: HeadProbes,
    heads: Sequence[Head],
) -> ReadoutMetric:
    """Mean accuracy of the fixed probes of ``heads`` on ``prompts``: does ablating a head
    destroy the truthfulness signal downstream? (Not differentiable.)"""
    labels = torch.tensor([p.label for p in prompts], dtype=torch.bool)
    weight, bias = probes.params(heads)

    def reduce(z: Tensor) -> Tensor:
        predictions = ((z * weight.to(z)).sum(-1) + bias.to(z)) > 0
        return (predictions == labels[:, None].to(z.device)).double().mean()

    return ReadoutMetric(
        "probe_accuracy", _readout_prompts(model, prompts), tuple(heads), reduce, False
    )


def p_true_metric(
    model: TransformerBridge,
    prompts: Sequence[LabelledPrompt],
    steering: Steering,
    *,
    tracker: str = DEFAULT_TRACKER,
) -> ReadoutMetric:
    """The tracker's mean ``p_true`` over ``prompts`` (at their last token): what FASB's
    trigger reads."""
    reader = steering.tracker(tracker)

    def reduce(z: Tensor) -> Tensor:
        return reader.p_true(z).double().mean()

    return ReadoutMetric("p_true", _readout_prompts(model, prompts), steering.heads, reduce)
