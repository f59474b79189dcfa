"""Judges of generated TruthfulQA answers: is an answer truthful, is it informative?

Every judge maps :class:`JudgeInput` items (question, answer, true and false reference
answers) to :class:`Verdict` objects through one method, ``judge_many``. The paper's
fine-tuned GPT-3 judges are gone, so the judges here are stand-ins: reference-matching
proxies (BLEU, ROUGE-L, embedding similarity: closer to a true reference than to any false
one), a refusal check for informativeness, and AllenAI's open Llama-2 judges trained to
replace GPT-judge and GPT-info. :func:`summarize` turns one truth judge's and one info
judge's verdicts into the paper's True, Info and True×Info rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fasb_lens.evaluation.judges.base import NO_COMMENT, Judge, JudgeInput, Verdict, summarize
from fasb_lens.evaluation.judges.info import (
    REFUSAL_PHRASES,
    InfoCheck,
    is_degenerate,
    is_non_answer,
)
from fasb_lens.evaluation.judges.llm import (
    ALLENAI_INFO_MODEL,
    ALLENAI_TRUTH_MODEL,
    LLM_CUES,
    LLMJudge,
    allenai_judge,
    continuation_token_id,
    judge_prompt,
)
from fasb_lens.evaluation.judges.reference import (
    BleuJudge,
    EmbeddingJudge,
    RougeJudge,
    embedding_model_path,
    true_vs_false,
)

OFFLINE_JUDGES = ("bleu-acc", "rouge-l-acc", "embedding-acc", "info-check")

JUDGES: dict[str, Callable[..., Judge]] = {
    "bleu-acc": BleuJudge,
    "rouge-l-acc": RougeJudge,
    "embedding-acc": EmbeddingJudge,
    "info-check": InfoCheck,
    "allenai-truth": allenai_judge("truth", ALLENAI_TRUTH_MODEL),
    "allenai-info": allenai_judge("info", ALLENAI_INFO_MODEL),
}


def judge_by_name(name: str, **kwargs: Any) -> Judge:
    """Build the judge called ``name``; ``kwargs`` go to its constructor."""
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; known judges: {', '.join(JUDGES)}")
    return JUDGES[name](**kwargs)


__all__ = [
    "ALLENAI_INFO_MODEL",
    "ALLENAI_TRUTH_MODEL",
    "JUDGES",
    "LLM_CUES",
    "NO_COMMENT",
    "OFFLINE_JUDGES",
    "REFUSAL_PHRASES",
    "BleuJudge",
    "EmbeddingJudge",
    "InfoCheck",
    "Judge",
    "JudgeInput",
    "LLMJudge",
    "RougeJudge",
    "Verdict",
    "continuation_token_id",
    "embedding_model_path",
    "is_degenerate",
    "is_non_answer",
    "judge_by_name",
    "judge_prompt",
    "summarize",
    "true_vs_false",
]
