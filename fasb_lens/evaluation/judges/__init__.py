"""Judges of generated TruthfulQA answers: is an answer truthful, is it informative?

Every judge maps :class:`JudgeInput` items (question, answer, true and false reference
answers) to :class:`Verdict` objects through one method, ``judge_many``. The paper's
fine-tuned GPT-3 judges are gone, so the judges here are stand-ins: reference-matching
proxies (BLEU, ROUGE-L, embedding similarity: closer to a true reference than to any false
one), a refusal check for informativeness, and AllenAI's open Llama-2 judges trained to
replace GPT-judge and GPT-info. :func:`judge_rates` turns one truth judge's and one info
judge's verdicts into the paper's True, Info and True×Info rates.
"""

from __future__ import annotations

# isort: off
# the judge modules register their judges on import, in this (the tables') order
from fasb_lens.evaluation.judges.base import (
    JUDGES,
    NO_COMMENT,
    Judge,
    JudgeInput,
    JudgeKind,
    JudgeSpec,
    Verdict,
    judge_by_name,
    judges_of_kind,
    register,
    judge_rates,
)
from fasb_lens.evaluation.judges.reference import (
    BleuJudge,
    EmbeddingJudge,
    RougeJudge,
    embedding_model_path,
    true_vs_false,
)
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

# isort: on

__all__ = [
    "ALLENAI_INFO_MODEL",
    "ALLENAI_TRUTH_MODEL",
    "JUDGES",
    "LLM_CUES",
    "NO_COMMENT",
    "REFUSAL_PHRASES",
    "BleuJudge",
    "EmbeddingJudge",
    "InfoCheck",
    "Judge",
    "JudgeInput",
    "JudgeKind",
    "JudgeSpec",
    "LLMJudge",
    "RougeJudge",
    "Verdict",
    "allenai_judge",
    "continuation_token_id",
    "embedding_model_path",
    "is_degenerate",
    "is_non_answer",
    "judge_by_name",
    "judge_prompt",
    "judges_of_kind",
    "register",
    "judge_rates",
    "true_vs_false",
]
