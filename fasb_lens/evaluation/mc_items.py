"""Scoring a multiple-choice dataset's items cloze-style, under any policies.

Each item's options become ``(prefix, continuation)`` pairs (its dataset's prompt
format); the model's summed log-probability of each continuation after its prefix is the
option's score and the highest wins (:func:`predict`). An :class:`ItemScorer` runs each
distinct prefix once and scores the options of several policies together; several items
are scored together too (:func:`score_items`).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.data.mc import option_prompts
from fasb_lens.data.schema import MultipleChoiceItem
from fasb_lens.decisions import DEFAULT_TRACKER, Policy, Unsteered
from fasb_lens.models import tokenize
from fasb_lens.scoring import AnswerScore, PrefixScorer, ScoringJob, score_together
from fasb_lens.steering import Steering


class ItemScorer:
    """One :class:`PrefixScorer` per distinct prefix of an item; scores in option order.

    Built once per item, it scores the item under any number of policies while running
    each prefix only once.
    """

    def __init__(
        self, model: TransformerBridge, item: MultipleChoiceItem, steering: Steering | None
    ) -> None:
        pairs = option_prompts(item)
        self.continuations = [continuation for _, continuation in pairs]
        by_prefix: dict[str, list[int]] = {}
        for index, (prefix, _) in enumerate(pairs):
            by_prefix.setdefault(prefix, []).append(index)
        self.groups = [
            (PrefixScorer(model, prefix, steering=steering, steer_prompt_end=True), indices)
            for prefix, indices in by_prefix.items()
        ]

    def readings(self, tracker: str = DEFAULT_TRACKER) -> list[float]:
        """The tracker's unsteered readings over every option: at each prefix's last
        token, then at each token of the option."""
        return [
            value
            for scorer, indices in self.groups
            for values in scorer.readings(
                tokenize(scorer.model, [self.continuations[i] for i in indices], prepend_bos=False),
                tracker,
            )
            for value in values
        ]

    def score(self, policy: Policy | None) -> list[AnswerScore]:
        return self.score_many([policy or Unsteered()])[0]

    def score_many(self, policies: Sequence[Policy]) -> list[list[AnswerScore]]:
        """Each policy's scores in option order, the policies' passes run together
        (:meth:`~fasb_lens.scoring.PrefixScorer.score_policies`)."""
        return score_items([self], policies)[0]

    def jobs(self, policies: Sequence[Policy]) -> list[ScoringJob]:
        """One scoring job per prefix."""
        jobs = []
        for scorer, indices in self.groups:
            texts = [self.continuations[index] for index in indices]
            ids = tokenize(scorer.model, texts, prepend_bos=False)
            jobs.append(ScoringJob(scorer, ids, policies, texts))
        return jobs

    def in_option_order(
        self, results: Sequence[list[list[AnswerScore]]]
    ) -> list[list[AnswerScore]]:
        """The jobs' results (per prefix, per policy) as each policy's scores in option order."""
        scores: list[dict[int, AnswerScore]] = [{} for _ in results[0]]
        for (_, indices), per_policy in zip(self.groups, results, strict=True):
            for found, scored in zip(scores, per_policy, strict=True):
                found.update(zip(indices, scored, strict=True))
        return [[found[index] for index in range(len(self.continuations))] for found in scores]


def score_items(
    scorers: Sequence[ItemScorer], policies: Sequence[Policy]
) -> list[list[list[AnswerScore]]]:
    """Every item's scores under every policy (per item, per policy, in option order),
    the items' passes run together (:func:`~fasb_lens.scoring.score_together`)."""
    jobs = [scorer.jobs(policies) for scorer in scorers]
    results = score_together([job for item_jobs in jobs for job in item_jobs])
    scores, begin = [], 0
    for scorer, item_jobs in zip(scorers, jobs, strict=True):
        scores.append(scorer.in_option_order(results[begin : begin + len(item_jobs)]))
        begin += len(item_jobs)
    return scores


def score_item(
    model: TransformerBridge,
    item: MultipleChoiceItem,
    policy: Policy | None = None,
    steering: Steering | None = None,
) -> list[AnswerScore]:
    """The log-likelihood of each option's continuation under ``policy``, in option order.

    Options sharing a prefix are scored as one batch on one cached prefix; Winogrande's
    options have a prefix each.
    """
    return ItemScorer(model, item, steering).score(policy)


def predict(scores: Sequence[AnswerScore]) -> int:
    """The index of the option with the highest summed log-probability (first on ties).

    The sum, not the per-token mean, is compared: it is the probability of the whole
    option, the measure TruthfulQA's MC scores use too, so every dataset and policy is
    judged alike. Length barely matters here: SST-2 and NLI options are single words,
    and Winogrande scores the same continuation for each option.
    """
    if not scores:
        raise ValueError("no scores to predict from")
    return max(range(len(scores)), key=lambda index: (scores[index].log_prob, -index))
